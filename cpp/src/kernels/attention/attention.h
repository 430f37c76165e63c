// Causal attention of a batch of query tokens against the KV cache, for prefill
// (many tokens per sequence, prompts of different lengths packed together) and
// decode (one token per sequence) alike:
//
//   for token t in (slot s, position p), head h, kv head g = h / (heads / kv_heads):
//     out[t, h, :] = Σ_{j ≤ p} softmax_j(scale · q[t, h, :] · K[s, g, j, :]) · V[s, g, j, :]
//
// The token's own key must already be in the cache (kv_cache_write first).
// Long contexts are split over the key range (flash-decoding): partial maxima,
// sums and outputs in fp32, combined inside a thread-block cluster or, through
// the workspace, by a second pass. The
// launch shape depends only on (tokens, heads, head_dim, max_positions), never
// on the positions themselves, so a decode step can be captured in a graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/attention/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

struct AttentionParams {
  const void* q = nullptr;  // [tokens, heads · head_dim], row stride q_stride elements
  int64_t q_stride = 0;
  KvCacheView cache;        // one layer's cache
  TokenPlacement place;     // [tokens]
  void* out = nullptr;      // [tokens, heads · head_dim] contiguous
  int64_t tokens = 0;
  int32_t heads = 0;        // query heads; a multiple of cache.kv_heads
  int32_t max_positions = 0;  // bound on position + 1 over the batch (≤ cache.max_seq)
  float scale = 0.f;        // usually 1 / sqrt(head_dim)
  void* workspace = nullptr;  // attention_workspace_bytes(...) bytes
  size_t workspace_bytes = 0;
  DType dtype = DType::kFloat16;
};

size_t attention_workspace_bytes(int64_t tokens, int32_t heads, int32_t head_dim, int32_t max_positions);

// Whether a launch of this shape merges its key chunks inside thread-block
// clusters instead of a second pass (compute capability 9.0, 2 to 8 chunks;
// SPARSELLM_ATTENTION_CLUSTERS=0 keeps the second pass). The workspace is the
// same either way.
bool attention_merges_in_clusters(int64_t tokens, int32_t heads, int32_t max_positions);

void attention(const AttentionParams& params, cudaStream_t stream);

}  // namespace sparsellm
