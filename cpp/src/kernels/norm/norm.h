// LayerNorm / RMSNorm over the last dimension, optionally fused with the
// residual add that precedes it (fp32 statistics):
//
//   if residual:  residual[i, :] += x[i, :]   (x may be null: residual unchanged)
//                 out[i, :] = norm(residual[i, :])
//   else:         out[i, :] = norm(x[i, :])
//
//   LayerNorm: (v − mean) / sqrt(var + eps) · gamma + beta      (beta may be null)
//   RMSNorm:    v / sqrt(mean(v²) + eps) · gamma
//
// out may alias residual (post-LayerNorm OPT writes the normed sum back into
// the residual stream) or x. The sum is rounded to the storage dtype before
// the statistics, as a framework computing `norm(residual + x)` does.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

enum class NormKind : int { kLayerNorm = 0, kRmsNorm = 1 };

struct NormParams {
  const void* x = nullptr;      // [n, width] or nullptr (then residual is required)
  void* residual = nullptr;     // [n, width] or nullptr
  const void* gamma = nullptr;  // [width]
  const void* beta = nullptr;   // [width] or nullptr
  void* out = nullptr;          // [n, width]
  int64_t n = 0, width = 0;
  float eps = 1e-5f;
  NormKind kind = NormKind::kLayerNorm;
  DType dtype = DType::kFloat16;
};

void norm(const NormParams& params, cudaStream_t stream);

}  // namespace sparsellm
