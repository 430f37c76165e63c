// The key/value cache of one decoder layer and the op that appends to it.
//
// Layout per layer: k, v [slots, kv_heads, max_seq, head_dim], so that one
// (sequence, head)'s keys are contiguous for the attention kernel. A token is
// placed by (slot, position): the batch slot of its sequence and its index in
// that sequence. Slots and positions live in device memory so that decode
// steps replayed from a CUDA graph read their current values.
//
//   kv_cache_write:  cache.k[slot[t], h, position[t], :] = k[t, h, :]   (and v)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

struct KvCacheView {
  void* k = nullptr;  // [slots, kv_heads, max_seq, head_dim]
  void* v = nullptr;  // [slots, kv_heads, max_seq, head_dim]
  int32_t slots = 0, kv_heads = 0, max_seq = 0, head_dim = 0;
};

// The layout's two rules for the kernels that use the cache: whether a token's
// (slot, position) lies inside it (kv_cache_write, the rotary kernel's append
// and attention skip the tokens outside), and the element offset of row
// (slot, kv head g, position) in k or v (the two writers).
__host__ __device__ __forceinline__ bool kv_cache_holds(int32_t slot, int32_t position, int32_t slots,
                                                        int32_t max_seq) {
  return slot >= 0 && slot < slots && position >= 0 && position < max_seq;
}
__host__ __device__ __forceinline__ int64_t kv_cache_row(int32_t slot, int64_t g, int32_t position, int32_t kv_heads,
                                                         int32_t max_seq, int32_t head_dim) {
  return ((int64_t(slot) * kv_heads + g) * max_seq + position) * head_dim;
}

// Where each token of a batch goes: both [tokens], device memory.
struct TokenPlacement {
  const int32_t* slot = nullptr;
  const int32_t* position = nullptr;  // 0 ≤ position < max_seq (caller's guarantee)
};

struct KvCacheWriteParams {
  const void* k = nullptr;  // [tokens, kv_heads · head_dim], row stride k_stride elements
  const void* v = nullptr;  // [tokens, kv_heads · head_dim], row stride v_stride elements
  int64_t k_stride = 0, v_stride = 0;
  KvCacheView cache;
  TokenPlacement place;
  int64_t tokens = 0;
  DType dtype = DType::kFloat16;
};

void kv_cache_write(const KvCacheWriteParams& params, cudaStream_t stream);

}  // namespace sparsellm
