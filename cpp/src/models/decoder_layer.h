// What the families' decoder layers share: the attention block (projections,
// RoPE where the family has it, the cached attention, the output projection
// and its all-reduce) and the setup of their norms. A layer class holds a
// SelfAttention beside its FFN and norms (models/opt, models/llama).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/norm/norm.h"
#include "layers/linear.h"
#include "models/decoder_model.h"
#include "runtime/checkpoint.h"
#include "runtime/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

class Communicator;

// The norms of a decoder layer, over the T tokens' rows of width H; the
// caller sets x, residual, gamma, beta and out for each one it runs.
NormParams layer_norms(NormKind kind, int64_t tokens, int64_t hidden, float eps, DType dtype);

// What one forward of a SelfAttention reads and writes besides the cache: the
// model's activations (device memory, row-major) and scratch.
struct SelfAttentionStep {
  const void* x = nullptr;  // [T, H] the layer's (normed) input
  void* qkv = nullptr;      // [T · (heads + 2 · kv_heads) · head_dim] the projections (SelfAttention::qkv_width)
  void* attn = nullptr;     // [T, heads · head_dim] attention output
  void* out = nullptr;      // [T, H] o_proj output (q's buffer may serve: q is dead by then); with
                            // o_norm, the residual stream o_proj's output is added to
  // RMSNorms folded into the projections (sparsellm/spmm.h: SpmmNormFold), where the model folds them.
  SpmmNormIn qkv_norm;      // q/k/v scale by the norm before them: x is its unscaled output
  SpmmNormOut o_norm;       // o_proj adds into `out` and writes the next norm's unscaled output
  const float* inv_freq = nullptr;  // [head_dim / 2] fp32 RoPE inverse frequencies; null: no RoPE
  const ForwardWorkspaces* ws = nullptr;
  const Communicator* comm = nullptr;  // null when tp = 1
  DType dtype = DType::kFloat16;
};

// The attention block of every family's decoder layer, over T packed tokens:
//   q = q_proj(x) [T, heads · d];  k, v = k_proj(x), v_proj(x) [T, kv_heads · d]
//     (one GEMM / SpMM when the three stack, rows [q | k | v] in `qkv`;
//      else three, q, k, v one after another in `qkv`)
//   q, k = rope(q, k)            (families with rotary positions only)
//   cache ← k, v                 (by the rope kernel where there is one, else kv_cache_write)
//   a = attention(q) [T, heads · d]   (against the cache; GQA when kv_heads < heads)
//   out = o_proj(a) [T, H]
// Under tensor parallelism heads and kv_heads are this rank's shares (rows of
// q/k/v, the matching input columns of o_proj): o_proj gives partial sums that
// an all-reduce on the stream completes, its bias held by rank 0 alone.
class SelfAttention {
 public:
  // Uploads `prefix` + q_proj, k_proj, v_proj (biases when qkv_bias) and
  // `prefix` + o_name (bias when o_bias; o_name also names its NVTX range).
  SelfAttention(const Checkpoint& ckpt, const std::string& prefix, const std::string& o_name, bool qkv_bias,
                bool o_bias, int64_t hidden, int32_t heads, int32_t kv_heads, int32_t head_dim, cudaStream_t stream);

  std::vector<const Linear*> linears() const;
  // Elements per token of the projections' scratch (SelfAttentionStep::qkv).
  int64_t qkv_width() const { return int64_t(heads_ + 2 * kv_heads_) * head_dim_; }

  // Enqueues the block on `stream`; `cache` is this layer's.
  void forward(const SelfAttentionStep& s, const ForwardBatch& batch, const KvCacheView& cache,
               cudaStream_t stream) const;

 private:
  std::string o_name_;
  int64_t hidden_;
  int32_t heads_, kv_heads_, head_dim_;
  std::unique_ptr<Linear> qkv_;        // q, k, v stacked, when they stack (Linear::stack)
  std::unique_ptr<Linear> q_, k_, v_;  // else each alone
  std::unique_ptr<Linear> o_;
};

}  // namespace sparsellm
