// What the families' decoder layers share (decoder_layer.h).
#include "models/decoder_layer.h"

#include <cmath>

#include "comm/communicator.h"
#include "common/check.h"
#include "kernels/attention/attention.h"
#include "kernels/rope/rope.h"
#include "models/model_loading.h"
#include "runtime/nvtx_range.h"

namespace sparsellm {

NormParams layer_norms(NormKind kind, int64_t tokens, int64_t hidden, float eps, DType dtype) {
  NormParams norm;
  norm.n = tokens;
  norm.width = hidden;
  norm.eps = eps;
  norm.kind = kind;
  norm.dtype = dtype;
  return norm;
}

SelfAttention::SelfAttention(const Checkpoint& ckpt, const std::string& prefix, const std::string& o_name,
                             bool qkv_bias, bool o_bias, int64_t hidden, int32_t heads, int32_t kv_heads,
                             int32_t head_dim, cudaStream_t stream)
    : o_name_(o_name), hidden_(hidden), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim) {
  const int64_t qw = int64_t(heads) * head_dim, kvw = int64_t(kv_heads) * head_dim;
  q_ = load_linear(ckpt, prefix + "q_proj", qkv_bias, false, qw, hidden, stream);
  k_ = load_linear(ckpt, prefix + "k_proj", qkv_bias, false, kvw, hidden, stream);
  v_ = load_linear(ckpt, prefix + "v_proj", qkv_bias, false, kvw, hidden, stream);
  o_ = load_linear(ckpt, prefix + o_name, o_bias, true, hidden, qw, stream);
  qkv_ = Linear::stack({q_.get(), k_.get(), v_.get()}, stream);
  if (qkv_) q_.reset(), k_.reset(), v_.reset();
}

std::vector<const Linear*> SelfAttention::linears() const {
  if (qkv_) return {qkv_.get(), o_.get()};
  return {q_.get(), k_.get(), v_.get(), o_.get()};
}

void SelfAttention::forward(const SelfAttentionStep& s, const ForwardBatch& b, const KvCacheView& cache,
                            cudaStream_t stream) const {
  const int64_t t = b.tokens_count;
  SPARSELLM_CHECK_ARG(!(s.comm && s.o_norm.gamma), "SelfAttention: o_proj cannot fold a norm under tensor "
                      "parallelism (its output is a partial sum until the all-reduce)");
  const int64_t qw = int64_t(heads_) * head_dim_, kvw = int64_t(kv_heads_) * head_dim_;
  const size_t elem = dtype_size(s.dtype);
  // Stacked: row i of qkv is [q_i | k_i | v_i]. Else q [T, qw], k [T, kvw], v [T, kvw] one after another.
  char* q = static_cast<char*>(s.qkv);
  char* k = q + elem * (qkv_ ? qw : t * qw);
  char* v = k + elem * (qkv_ ? kvw : t * kvw);
  const int64_t q_stride = qkv_ ? qkv_width() : qw, kv_stride = qkv_ ? qkv_width() : kvw;
  {
    NvtxRange r("qkv");
    const SpmmNormFold norm{{}, s.qkv_norm};
    if (qkv_) {
      qkv_->forward(s.x, q, t, s.ws->linear, stream, false, norm);
    } else {
      q_->forward(s.x, q, t, s.ws->linear, stream, false, norm);
      k_->forward(s.x, k, t, s.ws->linear, stream, false, norm);
      v_->forward(s.x, v, t, s.ws->linear, stream, false, norm);
    }
  }
  // The keys and values into the cache: by the rotary kernel where the family has one, else on their own.
  if (s.inv_freq) {
    NvtxRange r("rope, kv cache write");
    RopeParams rp;
    rp.q = q;
    rp.k = k;
    rp.q_stride = q_stride;
    rp.k_stride = kv_stride;
    rp.q_heads = heads_;
    rp.k_heads = kv_heads_;
    rp.head_dim = head_dim_;
    rp.position = b.place.position;
    rp.inv_freq = s.inv_freq;
    rp.tokens = t;
    rp.dtype = s.dtype;
    rp.cache = cache;  // the rotated keys and the values go into the cache in the same kernel
    rp.v = v;
    rp.v_stride = kv_stride;
    rp.slot = b.place.slot;
    rope(rp, stream);
  } else {
    NvtxRange r("kv cache write");
    KvCacheWriteParams kw;
    kw.k = k;
    kw.v = v;
    kw.k_stride = kw.v_stride = kv_stride;
    kw.cache = cache;
    kw.place = b.place;
    kw.tokens = t;
    kw.dtype = s.dtype;
    kv_cache_write(kw, stream);
  }
  {
    NvtxRange r("attention");
    AttentionParams ap;
    ap.q = q;
    ap.q_stride = q_stride;
    ap.cache = cache;
    ap.place = b.place;
    ap.out = s.attn;
    ap.tokens = t;
    ap.heads = heads_;
    ap.max_positions = b.max_positions;
    ap.scale = 1.0f / std::sqrt(float(head_dim_));
    ap.workspace = s.ws->attention.data();
    ap.workspace_bytes = s.ws->attention_bytes;
    ap.dtype = s.dtype;
    attention(ap, stream);
  }
  {
    NvtxRange r(o_name_.c_str());
    o_->forward(s.attn, s.out, t, s.ws->linear, stream, false, SpmmNormFold{s.o_norm, {}});
    if (s.comm) s.comm->all_reduce_sum(s.out, size_t(t * hidden_), s.dtype, stream);  // sum over the ranks' heads
  }
}

}  // namespace sparsellm
