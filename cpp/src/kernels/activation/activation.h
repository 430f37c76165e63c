// Elementwise activations of the feed-forward block, in place or gated:
//
//   activation:        x[i] = act(x[i])                         i < n
//   gated_activation:  out[r, c] = act(gate[r, c]) · up[r, c]   (Llama's SwiGLU)
//
// act: ReLU (OPT), GELU (exact erf form, as torch's default), SiLU. Math in fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

enum class Activation : int { kRelu = 0, kGelu = 1, kSilu = 2 };

struct ActivationParams {
  void* x = nullptr;  // [n] elements, updated in place
  int64_t n = 0;
  Activation kind = Activation::kRelu;
  DType dtype = DType::kFloat16;
};

struct GatedActivationParams {
  const void* gate = nullptr;  // [rows, cols], row stride gate_stride
  const void* up = nullptr;    // [rows, cols], row stride up_stride
  void* out = nullptr;         // [rows, cols] contiguous; may alias gate or up
  int64_t rows = 0, cols = 0, gate_stride = 0, up_stride = 0;
  Activation kind = Activation::kSilu;
  DType dtype = DType::kFloat16;
};

void activation(const ActivationParams& params, cudaStream_t stream);
void gated_activation(const GatedActivationParams& params, cudaStream_t stream);

// Parses "relu", "gelu", "silu" (Hugging Face `activation_function` / `hidden_act`
// names, "gelu_new"/"gelu_pytorch_tanh" excluded); throws InvalidArgument otherwise.
Activation activation_from_name(const char* name);

}  // namespace sparsellm
