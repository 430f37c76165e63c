#include "kernels/spmm/x_tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "common/check.h"

namespace sparsellm::stream_k {
namespace {

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda), looked up once.
PFN_cuTensorMapEncodeTiled_v12000 encode_function() {
  struct Lookup {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    cudaError_t status = cudaSuccess;
  };
  static const Lookup lookup = [] {
    Lookup l;
    l.status = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &l.fn, 12000, cudaEnableDefault, &l.found);
    return l;
  }();
  SPARSELLM_CHECK_CUDA(lookup.status);
  if (lookup.found != cudaDriverEntryPointSuccess || lookup.fn == nullptr)
    throw CudaError(detail::concat("spmm: the CUDA driver has no cuTensorMapEncodeTiled (query result ",
                                   int(lookup.found), "); TMA needs a driver for CUDA 12.0 or later"));
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(lookup.fn);
}

}  // namespace

CUtensorMap x_tile_map(const void* x, int64_t n, int64_t k, DType dtype, int rows) {
  SPARSELLM_CHECK_ARG(k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0,
                      "spmm: a TMA tensor needs k % 8 == 0 and a 16-byte aligned x, got k = ", k);
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(k), cuuint64_t(n)};
  const cuuint64_t strides[1] = {cuuint64_t(k) * 2};  // bytes between rows
  const cuuint32_t box[2] = {64, cuuint32_t(rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status = encode_function()(
      &map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
      const_cast<void*>(x), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS)
    throw CudaError(detail::concat("spmm: cuTensorMapEncodeTiled failed with CUresult ", int(status), " for x [",
                                   n, ", ", k, "], box [", rows, ", 64]"));
  return map;
}

}  // namespace sparsellm::stream_k
