// A linear layer whose weight is dense (cuBLASLt) or sparse (an SpMM format),
// as the checkpoint says per tensor:
//
//   y[n, out] = x[n, in] · W[out, in]ᵀ (+ b[out])
//
// The weight is uploaded once (and, for sparse formats, its stream-K plan
// computed once); forward() only enqueues work on the stream it is given.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"
#include "sparsellm/spmm.h"
#include "sparsellm/types.h"

namespace sparsellm {

// Scratch shared by every Linear of a model on one stream. The SpMM part is
// zero-filled once at creation (the kernels leave it as they found it).
struct LinearWorkspace {
  void* spmm = nullptr;
  size_t spmm_bytes = 0;
  void* gemm = nullptr;
  size_t gemm_bytes = 0;
};

class Linear {
 public:
  // Uploads `weight_name` (any supported format) and, when bias_name is not
  // empty, that dense vector; validates their shapes against each other.
  Linear(const Checkpoint& checkpoint, const std::string& weight_name, const std::string& bias_name,
         cudaStream_t stream);
  // A dense weight already on the device (not owned), e.g. a tied LM head.
  static Linear dense_view(const void* weight, int64_t out_features, int64_t in_features, DType dtype);
  // One layer computing the parts side by side: W = [W_0; W_1; …] stacked by
  // rows, so y[n, Σ out_i] = [y_0 | y_1 | …] in one GEMM or SpMM instead of
  // one per part (q/k/v, gate/up). The weights are copied on the device (and
  // the stream synchronized, so the parts may be freed once it returns).
  // nullptr when the parts cannot share one weight: different formats, input
  // widths or dtypes, a bias on some parts only, or a sparse part before the
  // last whose rows are not whole tile rows (128).
  static std::unique_ptr<Linear> stack(const std::vector<const Linear*>& parts, cudaStream_t stream);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  std::string format() const;  // "dense" or the sparse format's name (sparse_format_name)
  size_t device_bytes() const;  // bytes of the weight (and bias) on the device
  // Workspace this layer needs for inputs of up to max_n rows (a split 2:4
  // weight that expands to dense for them: room for the dense matrix).
  size_t spmm_workspace_bytes(int64_t max_n) const;
  // Whether n rows of input multiply this weight expanded to dense (split 2:4
  // beyond kSplit24SpmmMaxRows), in the SpMM workspace, by cuBLAS.
  bool expands_to_dense(int64_t n) const;

  // Whether a product of n rows may fold an RMSNorm in (SpmmNormFold): a
  // sparse weight multiplied by its SpMM, n ≤ kSpmmNormFoldMaxRows.
  bool folds_norm(int64_t n) const;

  // y = x · Wᵀ (+ b); with relu, max(·, 0) in the same GEMM or SpMM (its
  // epilogue); with a norm fold (folds_norm(n) only) as SpmmNormFold says.
  void forward(const void* x, void* y, int64_t n, const LinearWorkspace& workspace, cudaStream_t stream,
               bool relu = false, const SpmmNormFold& norm = {}) const;

 private:
  Linear() = default;
  std::string name_;
  int64_t in_ = 0, out_ = 0;
  DType dtype_ = DType::kFloat16;
  const void* weight_ptr_ = nullptr;  // dense: the [out, in] matrix
  std::vector<DeviceBuffer> buffers_;  // owned device arrays (weight components, plan, bias)
  const void* bias_ = nullptr;
  // Sparse formats (empty: dense): the encoded weight and its stream-K plan on the device.
  std::optional<SparseMatrixView> sparse_;
  const void* plan_ = nullptr;
  int plan_blocks_ = 0;

  // End of the dense [out, in] weight in the SpMM workspace's scratch (expands_to_dense).
  size_t dense_scratch_end() const;
  // y = x · wᵀ (+ b) by cuBLAS for a dense [out, in] matrix w on the device.
  void gemm(const void* w, const void* x, void* y, int64_t n, const LinearWorkspace& workspace, cudaStream_t stream,
            bool relu) const;
  // Takes the encoded weight (data, device and host tile offsets) and uploads its stream-K plan.
  void set_sparse(DeviceBuffer data, DeviceBuffer tile_offsets, const std::vector<uint32_t>& host_offsets,
                  SparseFormat format, cudaStream_t stream);
  // A sparse weight's [tiles + 1] tile offsets, copied from the device (the stream synchronized).
  std::vector<uint32_t> download_tile_offsets(cudaStream_t stream) const;
};

}  // namespace sparsellm
