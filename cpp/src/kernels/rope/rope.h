// Rotary position embedding (Su et al. 2021) in Hugging Face's "rotate half"
// layout, applied in place to the query and key rows of a batch of tokens:
//
//   for token t at position p, head h, pair i < head_dim / 2, angle a = p · inv_freq[i]:
//     x0 = x[t, h, i],  x1 = x[t, h, i + head_dim/2]
//     x[t, h, i]              = x0 · cos(a) − x1 · sin(a)
//     x[t, h, i + head_dim/2] = x1 · cos(a) + x0 · sin(a)
//
// (q and k alike; transformers' `apply_rotary_pos_emb` with `rotate_half`.)
// Positions are read from device memory (TokenPlacement::position), so a
// decode step replayed from a CUDA graph rotates by the current positions.
// The inverse frequencies — theta^(−2i/head_dim), then the `rope_scaling` of
// the config — are computed once on the host (rope_inverse_frequencies) and
// held in a small device table [head_dim / 2] of fp32. The angle and its
// cosine and sine are fp32 (accurate sincosf, not the intrinsic: positions
// reach thousands of radians); the rotated values are rounded once to the
// storage dtype.
//
// Optionally the same kernel appends the token's keys, as rotated, and its
// values to a layer's KV cache (what kv_cache_write does, one kernel fewer
// per layer): RopeParams::cache.k set, v and slot given.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

// The rotary settings of a config (Hugging Face `rope_theta` and `rope_scaling`
// / `rope_parameters`).
struct RopeConfig {
  enum class Scaling : int { kNone = 0, kLinear = 1, kLlama3 = 2 };
  float theta = 10000.f;
  Scaling scaling = Scaling::kNone;
  float factor = 1.f;                        // linear, llama3
  float low_freq_factor = 1.f;               // llama3
  float high_freq_factor = 4.f;              // llama3
  int32_t original_max_positions = 8192;     // llama3: original_max_position_embeddings
};

// inv_freq [head_dim / 2], as transformers' ROPE_INIT_FUNCTIONS compute it
// (default, "linear", "llama3"); their attention scaling is 1 for all three.
// Throws InvalidArgument for an odd head_dim or a non-positive theta/factor.
std::vector<float> rope_inverse_frequencies(const RopeConfig& config, int32_t head_dim);

struct RopeParams {
  void* q = nullptr;               // [tokens, q_heads · head_dim], row stride q_stride elements; in place
  void* k = nullptr;               // [tokens, k_heads · head_dim], row stride k_stride elements; in place
  int64_t q_stride = 0, k_stride = 0;
  int32_t q_heads = 0, k_heads = 0;  // k may be null with k_heads = 0
  int32_t head_dim = 0;            // even, ≤ 1024
  const int32_t* position = nullptr;  // [tokens] device, ≥ 0
  const float* inv_freq = nullptr;    // [head_dim / 2] device, fp32
  int64_t tokens = 0;
  DType dtype = DType::kFloat16;
  // The append (cache.k == nullptr: none). cache.kv_heads == k_heads and cache.head_dim == head_dim;
  // cache.k[slot[t], g, position[t], :] = k[t, g, :] after the rotation, the same for v unrotated.
  // A token whose slot or position lies outside the cache is not appended.
  KvCacheView cache;
  const void* v = nullptr;        // [tokens, k_heads · head_dim], row stride v_stride elements
  int64_t v_stride = 0;
  const int32_t* slot = nullptr;  // [tokens] device
};

void rope(const RopeParams& params, cudaStream_t stream);

}  // namespace sparsellm
