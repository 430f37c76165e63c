// Llama-family model: config parsing, weight upload, the forward over packed
// tokens (see llama_model.h for the math and the fusions).
#include "models/llama/llama_model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "comm/communicator.h"
#include "common/check.h"
#include "kernels/activation/activation.h"
#include "kernels/embedding/embedding.h"
#include "kernels/norm/norm.h"
#include "models/decoder_layer.h"
#include "models/model_loading.h"
#include "runtime/nvtx_range.h"
#include "runtime/weights.h"
#include "sparsellm/gemm.h"

namespace sparsellm {
namespace {

using nlohmann::json;

// --- config ---------------------------------------------------------------

// rope_theta and the scaling: transformers ≥ 5 writes one `rope_parameters`
// object (rope_type, rope_theta, factor, …); earlier versions `rope_theta`
// and a `rope_scaling` object (or null) with "rope_type" or "type".
RopeConfig rope_config(const json& c, const std::string& where) {
  RopeConfig rope;
  const json none = json::object();
  const json* params = &none;
  if (has_value(c, "rope_parameters")) params = &c.at("rope_parameters");
  else if (has_value(c, "rope_scaling")) params = &c.at("rope_scaling");
  if (!params->is_object())
    throw FormatError(where + ": model_config.rope_parameters / rope_scaling must be an object or null");
  const json& p = *params;
  rope.theta = number(p, "rope_theta", number(c, "rope_theta", 10000.f, where), where);
  if (!(std::isfinite(rope.theta) && rope.theta > 0.f))
    throw InvalidArgument(detail::concat(where, ": rope_theta must be positive, got ", rope.theta));
  std::string type = "default";
  for (const char* key : {"rope_type", "type"})
    if (has_value(p, key)) {
      if (!p.at(key).is_string()) throw FormatError(detail::concat(where, ": model_config rope ", key, " must be a string"));
      type = p.at(key).get<std::string>();
      break;
    }
  if (type == "default") {
    rope.scaling = RopeConfig::Scaling::kNone;
  } else if (type == "linear") {
    rope.scaling = RopeConfig::Scaling::kLinear;
    rope.factor = number(p, "factor", 0.f, where);
  } else if (type == "llama3") {
    rope.scaling = RopeConfig::Scaling::kLlama3;
    rope.factor = number(p, "factor", 0.f, where);
    rope.low_freq_factor = number(p, "low_freq_factor", 0.f, where);
    rope.high_freq_factor = number(p, "high_freq_factor", 0.f, where);
    if (!has_value(p, "original_max_position_embeddings"))
      throw FormatError(where + ": llama3 rope scaling needs original_max_position_embeddings");
    rope.original_max_positions = positive_int(p, "original_max_position_embeddings", where);
  } else {
    throw InvalidArgument(detail::concat(where, ": rope_type '", type,
                                         "' is not supported (supported: default, linear, llama3)"));
  }
  if (rope.scaling != RopeConfig::Scaling::kNone && !(std::isfinite(rope.factor) && rope.factor > 0.f))
    throw InvalidArgument(detail::concat(where, ": rope scaling '", type, "' needs a positive factor"));
  if (rope.scaling == RopeConfig::Scaling::kLlama3 &&
      !(rope.low_freq_factor > 0.f && rope.high_freq_factor > rope.low_freq_factor))
    throw InvalidArgument(detail::concat(where, ": llama3 rope scaling needs high_freq_factor > low_freq_factor > 0"));
  const float partial = number(p, "partial_rotary_factor", number(c, "partial_rotary_factor", 1.f, where), where);
  if (partial != 1.f)
    throw InvalidArgument(detail::concat(where, ": partial_rotary_factor ", partial,
                                         " is not supported (rotary embedding over the whole head only)"));
  return rope;
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& c, const std::string& where) {
  if (!c.is_object()) throw FormatError(where + ": model_config must be an object");
  LlamaConfig cfg;
  if (c.contains("model_type")) {
    if (!c.at("model_type").is_string()) throw FormatError(where + ": model_config.model_type must be a string");
    cfg.model_type = c.at("model_type").get<std::string>();
  }
  if (cfg.model_type != "llama" && cfg.model_type != "mistral" && cfg.model_type != "qwen2")
    throw InvalidArgument(detail::concat(where, ": model_type '", cfg.model_type,
                                         "' is not of the Llama family (supported: llama, mistral, qwen2)"));
  cfg.vocab_size = positive_int(c, "vocab_size", where);
  cfg.hidden_size = positive_int(c, "hidden_size", where);
  cfg.intermediate_size = positive_int(c, "intermediate_size", where);
  cfg.num_layers = positive_int(c, "num_hidden_layers", where);
  cfg.num_heads = positive_int(c, "num_attention_heads", where);
  cfg.num_kv_heads = has_value(c, "num_key_value_heads") ? positive_int(c, "num_key_value_heads", where) : cfg.num_heads;
  cfg.max_positions = positive_int(c, "max_position_embeddings", where);
  if (cfg.num_heads % cfg.num_kv_heads != 0)
    throw InvalidArgument(detail::concat(where, ": num_attention_heads ", cfg.num_heads,
                                         " is not a multiple of num_key_value_heads ", cfg.num_kv_heads));
  if (has_value(c, "head_dim")) {
    cfg.head_dim = positive_int(c, "head_dim", where);
  } else {
    if (cfg.hidden_size % cfg.num_heads != 0)
      throw InvalidArgument(detail::concat(where, ": hidden_size ", cfg.hidden_size,
                                           " is not a multiple of num_attention_heads ", cfg.num_heads));
    cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  }
  if (cfg.head_dim % 8 != 0 || cfg.head_dim > 256)
    throw InvalidArgument(detail::concat(where, ": head dimension ", cfg.head_dim,
                                         " is not supported: the attention kernel needs a multiple of 8 up to 256"));
  const std::string act = has_value(c, "hidden_act") && c.at("hidden_act").is_string()
                              ? c.at("hidden_act").get<std::string>()
                              : std::string("silu");
  if (act != "silu")
    throw InvalidArgument(detail::concat(where, ": hidden_act '", act, "' is not supported (the Llama FFN runs silu)"));
  cfg.norm_eps = number(c, "rms_norm_eps", 1e-6f, where);
  if (!(std::isfinite(cfg.norm_eps) && cfg.norm_eps >= 0.f))
    throw InvalidArgument(detail::concat(where, ": rms_norm_eps must be ≥ 0, got ", cfg.norm_eps));
  cfg.rope = rope_config(c, where);
  cfg.tied_head = flag(c, "tie_word_embeddings", false, where);
  if (cfg.model_type == "qwen2") {
    cfg.qkv_bias = true;  // Qwen2Attention: q, k, v with bias, o without
    if (flag(c, "use_sliding_window", false, where))
      throw InvalidArgument(where + ": use_sliding_window is not supported (attention over the whole context only)");
  } else {
    cfg.qkv_bias = cfg.o_bias = flag(c, "attention_bias", false, where);
  }
  cfg.mlp_bias = flag(c, "mlp_bias", false, where);
  if (has_value(c, "layer_types")) {  // transformers ≥ 5: per-layer attention kind
    const json& types = c.at("layer_types");
    if (!types.is_array()) throw FormatError(where + ": model_config.layer_types must be a list");
    for (const json& t : types)
      if (!t.is_string() || t.get<std::string>() != "full_attention")
        throw InvalidArgument(detail::concat(where, ": layer_types holds '", t.dump(),
                                             "'; only full_attention layers are supported"));
  }
  if (cfg.model_type == "mistral" && has_value(c, "sliding_window"))
    cfg.sliding_window = positive_int(c, "sliding_window", where);
  cfg.eos_token_id = token_id(c, "eos_token_id", -1);
  cfg.bos_token_id = token_id(c, "bos_token_id", -1);
  if (cfg.eos_token_id >= cfg.vocab_size) cfg.eos_token_id = -1;
  if (cfg.bos_token_id >= cfg.vocab_size) cfg.bos_token_id = -1;
  return cfg;
}

// --- decoder layer --------------------------------------------------------

class LlamaDecoderLayer {
 public:
  LlamaDecoderLayer(const Checkpoint& ckpt, const LlamaModel& m, int index, cudaStream_t stream)
      : index_(index),
        range_name_("layer " + std::to_string(index)),
        attn_(ckpt, prefix(index) + "self_attn.", "o_proj", m.config_.qkv_bias, m.config_.o_bias,
              m.config_.hidden_size, m.heads_, m.kv_heads_, m.config_.head_dim, stream) {
    const LlamaConfig& cfg = m.config_;
    const std::string p = prefix(index);
    const int64_t h = cfg.hidden_size, f = m.ffn_;
    gate_ = load_linear(ckpt, p + "mlp.gate_proj", cfg.mlp_bias, false, f, h, stream);
    up_ = load_linear(ckpt, p + "mlp.up_proj", cfg.mlp_bias, false, f, h, stream);
    gate_up_ = Linear::stack({gate_.get(), up_.get()}, stream);
    if (gate_up_) gate_.reset(), up_.reset();
    down_ = load_linear(ckpt, p + "mlp.down_proj", cfg.mlp_bias, true, h, f, stream);
    attn_norm_ = upload_vector(ckpt, p + "input_layernorm.weight", h, stream);
    ffn_norm_ = upload_vector(ckpt, p + "post_attention_layernorm.weight", h, stream);
  }

  size_t weight_bytes() const { return attn_norm_.bytes() + ffn_norm_.bytes() + device_bytes(linears()); }

  size_t spmm_workspace_bytes(int64_t max_n) const { return sparsellm::spmm_workspace_bytes(linears(), max_n); }

  // Whether every projection of the layer may fold a norm in at n rows (Linear::folds_norm).
  bool folds_norms(int64_t n) const {
    const std::vector<const Linear*> all = linears();
    return std::all_of(all.begin(), all.end(), [n](const Linear* l) { return l->folds_norm(n); });
  }

  //   h += branch (down_proj's output, pending from the previous layer; none for layer 0)
  //   x = RMSNorm1(h);  q, k, v = proj(x);  rope(q, k);  cache ← k, v;  a = attention(q)
  //   branch = o_proj(a);  h += branch;  x = RMSNorm2(h)
  //   branch = down_proj(silu(gate_proj(x)) · up_proj(x))   (left pending; gate and up one
  //            GEMM / SpMM when they stack)
  // Folded (LlamaModel::folds_norms, at decode widths) no norm kernel runs but layer 0's first:
  // o_proj and down_proj add into h and write x unscaled (h ⊙ γ of the norm after them, down_proj
  // the next layer's; the last layer's down_proj stays pending) with the sums of squares, from
  // which q/k/v and gate/up scale their outputs (sparsellm/spmm.h: SpmmNormFold).
  void forward(const LlamaModel& m, const ForwardBatch& b, const KvCache& cache, cudaStream_t stream) const {
    NvtxRange layer_range(range_name_.c_str());
    const LlamaConfig& cfg = m.config_;
    const int64_t t = b.tokens_count, h = cfg.hidden_size;
    const DType dt = m.dtype_;
    const bool folded = m.folds_norms_ && t <= kSpmmNormFoldMaxRows;
    const bool last = size_t(index_) + 1 == m.layers_.size();
    // Sums of squares: [0] from down_proj for the next layer's q/k/v, [1] from o_proj for gate/up.
    auto sumsq = [&](int i) {
      return static_cast<float*>(m.norm_sumsq_.data()) + size_t(i) * m.norm_sumsq_.bytes() / (2 * sizeof(float));
    };

    NormParams norm = layer_norms(NormKind::kRmsNorm, t, h, cfg.norm_eps, dt);
    if (!folded || index_ == 0) {
      NvtxRange r("attention norm");
      norm.x = index_ == 0 ? nullptr : m.branch_.data();
      norm.residual = m.hidden_.data();
      norm.gamma = attn_norm_.data();
      norm.out = m.normed_.data();
      sparsellm::norm(norm, stream);
    }
    {
      SelfAttentionStep step;
      step.x = m.normed_.data();
      step.qkv = m.qkv_.data();
      step.attn = m.attn_.data();
      step.out = m.branch_.data();
      step.inv_freq = static_cast<const float*>(m.inv_freq_.data());
      step.ws = &m.ws_;
      step.comm = m.comm_;
      step.dtype = dt;
      if (folded) {
        if (index_ > 0) step.qkv_norm = SpmmNormIn{sumsq(0), cfg.norm_eps};
        step.o_norm = SpmmNormOut{ffn_norm_.data(), m.normed_.data(), sumsq(1)};
        step.out = m.hidden_.data();
      }
      attn_.forward(step, b, cache.layer(index_), stream);
    }
    if (!folded) {
      NvtxRange r("residual norm");
      norm.x = m.branch_.data();
      norm.residual = m.hidden_.data();
      norm.gamma = ffn_norm_.data();
      norm.out = m.normed_.data();
      sparsellm::norm(norm, stream);
    }
    {
      NvtxRange r("ffn");
      // Stacked: row i of gate_up is [gate_i | up_i]. Else gate [T, F] then up [T, F].
      const int64_t f = m.ffn_;
      char* gate = static_cast<char*>(m.gate_up_.data());
      char* up = gate + dtype_size(dt) * (gate_up_ ? f : t * f);
      const SpmmNormFold in{{}, folded ? SpmmNormIn{sumsq(1), cfg.norm_eps} : SpmmNormIn{}};
      if (gate_up_) {
        gate_up_->forward(m.normed_.data(), gate, t, m.ws_.linear, stream, false, in);
      } else {
        gate_->forward(m.normed_.data(), gate, t, m.ws_.linear, stream, false, in);
        up_->forward(m.normed_.data(), up, t, m.ws_.linear, stream, false, in);
      }
      GatedActivationParams act;
      act.gate = gate;
      act.up = up;
      act.out = m.act_.data();
      act.rows = t;
      act.cols = f;
      act.gate_stride = act.up_stride = gate_up_ ? 2 * f : f;
      act.kind = Activation::kSilu;
      act.dtype = dt;
      gated_activation(act, stream);
      if (folded && !last) {
        const SpmmNormOut out{m.layers_[size_t(index_) + 1]->attn_norm_.data(), m.normed_.data(), sumsq(0)};
        down_->forward(m.act_.data(), m.hidden_.data(), t, m.ws_.linear, stream, false, SpmmNormFold{out, {}});
      } else {
        down_->forward(m.act_.data(), m.branch_.data(), t, m.ws_.linear, stream);
      }
      if (m.comm_) m.comm_->all_reduce_sum(m.branch_.data(), size_t(t * h), dt, stream);  // sum over the ranks' units
    }
  }

 private:
  static std::string prefix(int index) { return "model.layers." + std::to_string(index) + "."; }

  std::vector<const Linear*> linears() const {
    std::vector<const Linear*> all = attn_.linears();
    if (gate_up_)
      all.push_back(gate_up_.get());
    else
      all.insert(all.end(), {gate_.get(), up_.get()});
    all.push_back(down_.get());
    return all;
  }

  int index_;
  std::string range_name_;
  SelfAttention attn_;
  std::unique_ptr<Linear> gate_up_;     // gate and up stacked, when they stack (Linear::stack)
  std::unique_ptr<Linear> gate_, up_;  // else each alone
  std::unique_ptr<Linear> down_;
  DeviceBuffer attn_norm_, ffn_norm_;  // [H] RMSNorm gammas
};

// --- model ----------------------------------------------------------------

LlamaModel::LlamaModel(const Checkpoint& ckpt, const LlamaConfig& cfg, int64_t max_tokens, int64_t max_outputs,
                       int32_t max_seq, cudaStream_t stream, const Communicator* comm)
    : config_(cfg), dtype_(ckpt.dtype()), max_tokens_(max_tokens), max_outputs_(max_outputs) {
  comm_ = check_model_args(ckpt, comm, max_tokens, max_outputs, "Llama");
  const int tp = ckpt.tp();
  if (cfg.num_heads % tp != 0 || cfg.num_kv_heads % tp != 0 || cfg.intermediate_size % tp != 0)
    throw InvalidArgument(detail::concat(ckpt.rank_file(), ": tp = ", tp, " does not divide num_attention_heads ",
                                         cfg.num_heads, ", num_key_value_heads ", cfg.num_kv_heads,
                                         " and intermediate_size ", cfg.intermediate_size));
  if (cfg.sliding_window > 0 && max_seq > cfg.sliding_window)
    throw InvalidArgument(detail::concat("Llama model: max_seq_len ", max_seq, " exceeds the model's sliding_window ",
                                         cfg.sliding_window, "; this runtime attends to the whole context, so "
                                         "sequences must fit in the window"));
  heads_ = cfg.num_heads / tp;
  kv_heads_ = cfg.num_kv_heads / tp;
  ffn_ = cfg.intermediate_size / tp;
  const int64_t h = cfg.hidden_size, v = cfg.vocab_size, d = cfg.head_dim;
  const int64_t qw = int64_t(heads_) * d, kvw = int64_t(kv_heads_) * d;

  {
    NvtxRange r("load weights");
    expect_shape(ckpt, "model.embed_tokens.weight", {v, h});
    embed_tokens_ = upload_dense(ckpt, "model.embed_tokens.weight", stream);
    final_gamma_ = upload_vector(ckpt, "model.norm.weight", h, stream);
    weight_bytes_ += embed_tokens_.bytes() + final_gamma_.bytes();
    if (cfg.tied_head && !ckpt.has("lm_head.weight")) {
      lm_head_ = std::make_unique<Linear>(Linear::dense_view(embed_tokens_.data(), v, h, dtype_));
    } else {
      lm_head_ = load_linear(ckpt, "lm_head", false, false, v, h, stream);
      weight_bytes_ += lm_head_->device_bytes();
    }
    const std::vector<float> inv_freq = rope_inverse_frequencies(cfg.rope, cfg.head_dim);
    inv_freq_ = DeviceBuffer(inv_freq.size() * sizeof(float), "RoPE inverse frequencies");
    inv_freq_.upload(inv_freq.data(), inv_freq.size() * sizeof(float), stream);  // pageable: staged before returning
    layers_.reserve(size_t(cfg.num_layers));
    for (int l = 0; l < cfg.num_layers; ++l) {
      layers_.push_back(std::make_unique<LlamaDecoderLayer>(ckpt, *this, l, stream));
      weight_bytes_ += layers_.back()->weight_bytes();
    }
    expect_no_extra_layers(ckpt, "model.layers." + std::to_string(cfg.num_layers) + ".input_layernorm.weight",
                           cfg.num_layers);
  }

  ActivationAllocator alloc{dtype_};
  alloc(hidden_, max_tokens, h, "hidden states");
  alloc(normed_, max_tokens, h, "normed hidden states");
  alloc(qkv_, max_tokens, qw + 2 * kvw, "queries, keys and values");
  alloc(attn_, max_tokens, qw, "attention output");
  alloc(gate_up_, max_tokens, 2 * int64_t(ffn_), "FFN gate and up");
  alloc(act_, max_tokens, ffn_, "FFN activation");
  alloc(branch_, max_tokens, h, "branch output");
  alloc(last_, max_outputs, h, "output rows");
  alloc(last_normed_, max_outputs, h, "normed output rows");
  workspace_bytes_ += alloc.bytes;

  // The RMSNorms fold into the projections at decode widths where every projection is sparse and
  // o_proj's and down_proj's outputs are whole sums (tp = 1). SPARSELLM_FOLD_NORMS=0 keeps the norm
  // kernels (measurements of the two against each other).
  folds_norms_ = comm_ == nullptr && !detail::switched_off("SPARSELLM_FOLD_NORMS") &&
                 std::all_of(layers_.begin(), layers_.end(), [](const auto& l) { return l->folds_norms(1); });
  if (folds_norms_) {
    const size_t floats = 2 * size_t((h + 127) / 128) * size_t(kSpmmNormFoldMaxRows);
    norm_sumsq_ = DeviceBuffer(floats * sizeof(float), "RMSNorm sums of squares");
    workspace_bytes_ += norm_sumsq_.bytes();
  }

  size_t spmm_bytes = lm_head_->spmm_workspace_bytes(max_outputs);
  for (const auto& layer : layers_) spmm_bytes = std::max(spmm_bytes, layer->spmm_workspace_bytes(max_tokens));
  workspace_bytes_ += ws_.allocate(max_tokens, heads_, cfg.head_dim, max_seq, spmm_bytes, stream);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::forward(const ForwardBatch& b, const KvCache& cache, cudaStream_t stream) const {
  const LlamaConfig& cfg = config_;
  check_forward_batch(b, cache, max_tokens_, max_outputs_, cfg.max_positions, "Llama");
  const int64_t t = b.tokens_count, h = cfg.hidden_size;

  {
    NvtxRange r("embedding");
    EmbeddingParams emb;
    emb.table = embed_tokens_.data();
    emb.ids = b.tokens;
    emb.out = hidden_.data();
    emb.n = t;
    emb.width = h;
    emb.rows = cfg.vocab_size;
    emb.dtype = dtype_;
    embedding(emb, stream);
  }

  for (const auto& layer : layers_) layer->forward(*this, b, cache, stream);
  if (b.outputs == 0) return;  // a prefill chunk in which no prompt ends

  NvtxRange r("lm head");
  // The output rows of the residual stream plus the last layer's pending FFN output.
  gather_output_rows(hidden_.data(), branch_.data(), b, h, last_.data(), dtype_, stream);
  NormParams norm;
  norm.x = last_.data();
  norm.gamma = final_gamma_.data();
  norm.out = last_normed_.data();
  norm.n = b.outputs;
  norm.width = h;
  norm.eps = cfg.norm_eps;
  norm.kind = NormKind::kRmsNorm;
  norm.dtype = dtype_;
  sparsellm::norm(norm, stream);
  lm_head_->forward(last_normed_.data(), b.logits, b.outputs, ws_.linear, stream);
}

}  // namespace sparsellm
