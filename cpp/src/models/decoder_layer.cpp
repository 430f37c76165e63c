// What the families' decoder layers share (decoder_layer.h).
#include "models/decoder_layer.h"

#include "comm/communicator.h"
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
}

void SelfAttention::forward(const SelfAttentionStep& s, const ForwardBatch& b, const KvCacheView& cache,
                            cudaStream_t stream) const {
  const int64_t t = b.tokens_count;
  const int64_t qw = int64_t(heads_) * head_dim_, kvw = int64_t(kv_heads_) * head_dim_;
  {
    NvtxRange r("qkv");
    q_->forward(s.x, s.q, t, s.ws->linear, stream);
    k_->forward(s.x, s.k, t, s.ws->linear, stream);
    v_->forward(s.x, s.v, t, s.ws->linear, stream);
  }
  if (s.inv_freq) {
    NvtxRange r("rope");
    RopeParams rp;
    rp.q = s.q;
    rp.k = s.k;
    rp.q_stride = qw;
    rp.k_stride = kvw;
    rp.q_heads = heads_;
    rp.k_heads = kv_heads_;
    rp.head_dim = head_dim_;
    rp.position = b.place.position;
    rp.inv_freq = s.inv_freq;
    rp.tokens = t;
    rp.dtype = s.dtype;
    rope(rp, stream);
  }
  {
    CachedAttention ca;
    ca.q = s.q;
    ca.k = s.k;
    ca.v = s.v;
    ca.q_stride = qw;
    ca.kv_stride = kvw;
    ca.out = s.attn;
    ca.heads = heads_;
    ca.head_dim = head_dim_;
    ca.workspace = s.ws->attention.data();
    ca.workspace_bytes = s.ws->attention_bytes;
    cached_attention(ca, cache, b, s.dtype, stream);
  }
  {
    NvtxRange r(o_name_.c_str());
    o_->forward(s.attn, s.out, t, s.ws->linear, stream);
    if (s.comm) s.comm->all_reduce_sum(s.out, size_t(t * hidden_), s.dtype, stream);  // sum over the ranks' heads
  }
}

}  // namespace sparsellm
