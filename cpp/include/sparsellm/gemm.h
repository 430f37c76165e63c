// Dense GEMM through cuBLASLt: the dense path of a linear layer and the
// baseline every sparse kernel is measured against.
//
//   Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias[M])
//
// X, W, Y row-major and contiguous (the layout of torch.nn.Linear's input,
// weight and output); fp16 or bf16 values, fp32 accumulation.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

struct DenseGemmParams {
  const void* x = nullptr;     // [n, k]
  const void* w = nullptr;     // [m, k]
  const void* bias = nullptr;  // [m] or nullptr
  void* y = nullptr;           // [n, m]
  bool relu = false;           // y = max(x · wᵀ + bias, 0): the activation in the GEMM's epilogue
  int64_t n = 0, m = 0, k = 0;
  DType dtype = DType::kFloat16;
  void* workspace = nullptr;   // device scratch for cuBLASLt, may be nullptr
  size_t workspace_bytes = 0;
};

// Workspace size that lets cuBLASLt pick its best kernels on Hopper.
constexpr size_t kDenseGemmWorkspaceBytes = size_t(32) << 20;

// Enqueues the GEMM on `stream`. One cuBLASLt handle per device, created on
// first use; algorithm choices are cached per shape.
void dense_gemm(const DenseGemmParams& params, cudaStream_t stream);

}  // namespace sparsellm
