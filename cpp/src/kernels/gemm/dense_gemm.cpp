// cuBLASLt wrapper for Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias).
//
// cuBLAS is column-major. Row-major W[M, K] is column-major K×M, so
// op(A) = Aᵀ with A = W (lda = K); row-major X[N, K] is column-major K×N
// (ldb = K); column-major C of M×N (ldc = M) is row-major Y[N, M]. The bias
// epilogue adds bias[m] to every column of C.
#include "sparsellm/gemm.h"

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "common/check.h"
#include "sparsellm/device.h"

namespace sparsellm {
namespace {

// One handle per device; cuBLASLt handles are thread-safe.
cublasLtHandle_t lt_handle() {
  static std::mutex mutex;
  static std::map<int, cublasLtHandle_t> handles;
  const int id = current_device().id;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(id);
  if (it != handles.end()) return it->second;
  cublasLtHandle_t handle = nullptr;
  SPARSELLM_CHECK_CUBLAS(cublasLtCreate(&handle));
  handles.emplace(id, handle);
  return handle;
}

// Descriptors and the chosen algorithm for one problem, built once. The bias
// pointer is an attribute of the descriptor, so setting it and enqueuing the
// product happen under the plan's own lock.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::unique_ptr<std::mutex> enqueue = std::make_unique<std::mutex>();
};

using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, bool, bool, size_t>;

GemmPlan& plan_for(cublasLtHandle_t handle, const DenseGemmParams& p) {
  static std::mutex mutex;
  static std::map<PlanKey, GemmPlan> plans;
  const PlanKey key{current_device().id, p.n, p.m, p.k, static_cast<int>(p.dtype), p.bias != nullptr, p.relu,
                    p.workspace_bytes};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;

  const cudaDataType_t type = p.dtype == DType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  GemmPlan plan;
  SPARSELLM_CHECK_CUBLAS(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  SPARSELLM_CHECK_CUBLAS(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  SPARSELLM_CHECK_CUBLAS(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  if (p.bias != nullptr || p.relu) {
    const cublasLtEpilogue_t epilogue = p.bias == nullptr ? CUBLASLT_EPILOGUE_RELU
                                        : p.relu          ? CUBLASLT_EPILOGUE_RELU_BIAS
                                                          : CUBLASLT_EPILOGUE_BIAS;
    SPARSELLM_CHECK_CUBLAS(
        cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  }
  if (p.bias != nullptr) {
    SPARSELLM_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &type,
                                                          sizeof(type)));
  }
  SPARSELLM_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&plan.a, type, p.k, p.m, p.k));
  SPARSELLM_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&plan.b, type, p.k, p.n, p.k));
  SPARSELLM_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&plan.c, type, p.m, p.n, p.m));

  cublasLtMatmulPreference_t pref = nullptr;
  SPARSELLM_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  SPARSELLM_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &p.workspace_bytes, sizeof(p.workspace_bytes)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle, plan.op, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  SPARSELLM_CHECK_CUBLAS(status);
  if (found == 0) {
    throw CublasError(detail::concat("cuBLASLt found no algorithm for the GEMM n=", p.n, " m=", p.m, " k=", p.k,
                                     " dtype=", dtype_name(p.dtype)));
  }
  plan.algo = result.algo;
  return plans.emplace(key, std::move(plan)).first->second;
}

}  // namespace

void dense_gemm(const DenseGemmParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.n > 0 && p.m > 0 && p.k > 0, "dense_gemm: every dimension must be positive, got n=", p.n,
                      " m=", p.m, " k=", p.k);
  SPARSELLM_CHECK_ARG(p.x && p.w && p.y, "dense_gemm: x, w and y must be device pointers, not null");
  SPARSELLM_CHECK_ARG(p.workspace != nullptr || p.workspace_bytes == 0,
                      "dense_gemm: workspace_bytes > 0 needs a workspace pointer");
  cublasLtHandle_t handle = lt_handle();
  GemmPlan& plan = plan_for(handle, p);
  const float alpha = 1.0f, beta = 0.0f;
  std::lock_guard<std::mutex> lock(*plan.enqueue);
  if (p.bias != nullptr) {
    SPARSELLM_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                                          sizeof(p.bias)));
  }
  SPARSELLM_CHECK_CUBLAS(cublasLtMatmul(handle, plan.op, &alpha, p.w, plan.a, p.x, plan.b, &beta, p.y, plan.c,
                                        p.y, plan.c, &plan.algo, p.workspace, p.workspace_bytes, stream));
  SPARSELLM_CHECK_LAUNCH("cublasLtMatmul");
}

}  // namespace sparsellm
