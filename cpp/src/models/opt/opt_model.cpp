// OPT model: config parsing, weight upload, the forward over packed tokens
// (see opt_model.h for the math and the fusions).
#include "models/opt/opt_model.h"

#include <algorithm>
#include <cstring>

#include "comm/communicator.h"
#include "common/check.h"
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

// 1.0 in the storage dtype, for the gamma of norms without learned affine parameters.
uint16_t one_bits(DType dtype) { return dtype == DType::kFloat16 ? uint16_t(0x3C00) : uint16_t(0x3F80); }

// A LayerNorm's parameters: learned (gamma, beta) or unit gamma and no beta.
struct NormWeights {
  DeviceBuffer gamma, beta;
  const void* gamma_ptr = nullptr;
  const void* beta_ptr = nullptr;
};

NormWeights load_norm(const Checkpoint& ckpt, const std::string& module, const OptConfig& cfg,
                      const DeviceBuffer& ones, cudaStream_t stream) {
  NormWeights w;
  if (cfg.norm_affine) {
    w.gamma = upload_vector(ckpt, module + ".weight", cfg.hidden_size, stream);
    w.beta = upload_vector(ckpt, module + ".bias", cfg.hidden_size, stream);
    w.gamma_ptr = w.gamma.data();
    w.beta_ptr = w.beta.data();
  } else {
    w.gamma_ptr = ones.data();
  }
  return w;
}

}  // namespace

OptConfig OptConfig::from_json(const json& c, const std::string& where) {
  if (!c.is_object()) throw FormatError(where + ": model_config must be an object");
  if (c.contains("model_type") && c.at("model_type") != "opt")
    throw InvalidArgument(detail::concat(where, ": model_type '", c.at("model_type").dump(),
                                         "' is not OPT; this runtime runs OPT models"));
  OptConfig cfg;
  cfg.vocab_size = positive_int(c, "vocab_size", where);
  cfg.hidden_size = positive_int(c, "hidden_size", where);
  cfg.num_layers = positive_int(c, "num_hidden_layers", where);
  cfg.num_heads = positive_int(c, "num_attention_heads", where);
  cfg.ffn_dim = positive_int(c, "ffn_dim", where);
  cfg.max_positions = positive_int(c, "max_position_embeddings", where);
  cfg.embed_dim = c.contains("word_embed_proj_dim") && !c.at("word_embed_proj_dim").is_null()
                      ? positive_int(c, "word_embed_proj_dim", where)
                      : cfg.hidden_size;
  if (cfg.hidden_size % cfg.num_heads != 0)
    throw InvalidArgument(detail::concat(where, ": hidden_size ", cfg.hidden_size,
                                         " is not a multiple of num_attention_heads ", cfg.num_heads));
  cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  if (cfg.head_dim % 8 != 0 || cfg.head_dim > 256)
    throw InvalidArgument(detail::concat(where, ": head dimension ", cfg.head_dim, " (hidden_size ", cfg.hidden_size,
                                         " / ", cfg.num_heads, " heads) is not supported: the attention kernel needs "
                                         "a multiple of 8 up to 256"));
  cfg.pre_norm = flag(c, "do_layer_norm_before", true, where);
  cfg.final_norm = cfg.pre_norm && !flag(c, "_remove_final_layer_norm", false, where);
  cfg.norm_affine = flag(c, "layer_norm_elementwise_affine", true, where);
  cfg.bias = flag(c, "enable_bias", true, where);
  cfg.tied_head = flag(c, "tie_word_embeddings", true, where);
  const std::string act = c.contains("activation_function") && c.at("activation_function").is_string()
                              ? c.at("activation_function").get<std::string>()
                              : std::string("relu");
  try {
    cfg.activation = activation_from_name(act.c_str());
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(detail::concat(where, ": activation_function '", act,
                                         "' is not supported (supported: relu, gelu, silu)"));
  }
  cfg.eos_token_id = token_id(c, "eos_token_id", 2);
  cfg.bos_token_id = token_id(c, "bos_token_id", 2);
  if (cfg.eos_token_id >= cfg.vocab_size) cfg.eos_token_id = -1;
  return cfg;
}

// --- decoder layer --------------------------------------------------------

class OptDecoderLayer {
 public:
  OptDecoderLayer(const Checkpoint& ckpt, const OptConfig& cfg, int index, const DeviceBuffer& ones,
                  cudaStream_t stream)
      : index_(index),
        range_name_("layer " + std::to_string(index)),
        // Tensor parallelism: this rank's heads (rows of q/k/v, columns of out_proj).
        attn_(ckpt, prefix(index) + "self_attn.", "out_proj", cfg.bias, cfg.bias, cfg.hidden_size,
              cfg.num_heads / ckpt.tp(), cfg.num_heads / ckpt.tp(), cfg.head_dim, stream) {
    const std::string p = prefix(index);
    const int64_t h = cfg.hidden_size, f = cfg.ffn_dim;
    // Tensor parallelism: this rank's rows of fc1, columns of fc2; the
    // row-parallel biases are stored on rank 0 only (added once, before the all-reduce).
    const int64_t fl = f / ckpt.tp();
    fc1_ = load_linear(ckpt, p + "fc1", cfg.bias, false, fl, h, stream);
    fc2_ = load_linear(ckpt, p + "fc2", cfg.bias, true, h, fl, stream);
    attn_norm_ = load_norm(ckpt, p + "self_attn_layer_norm", cfg, ones, stream);
    ffn_norm_ = load_norm(ckpt, p + "final_layer_norm", cfg, ones, stream);
  }

  size_t weight_bytes(const OptConfig& cfg, DType dtype) const {
    size_t bytes = device_bytes(linears());
    if (cfg.norm_affine) bytes += 4 * size_t(cfg.hidden_size) * dtype_size(dtype);
    return bytes;
  }

  size_t spmm_workspace_bytes(int64_t max_n) const { return sparsellm::spmm_workspace_bytes(linears(), max_n); }

  // Pre-LN:   h += fc2_out (pending from the previous layer; none for layer 0)
  //           h += out_proj(attn(LN1(h)));  fc2_out = FFN(LN2(h))   (left pending)
  // Post-LN:  h = LN1(h + out_proj(attn(h)));  h = LN2(h + FFN(h))
  void forward(const OptModel& m, const OptForwardBatch& b, const KvCache& cache, cudaStream_t stream) const {
    NvtxRange layer_range(range_name_.c_str());
    const OptConfig& cfg = m.config_;
    const int64_t t = b.tokens_count, h = cfg.hidden_size;
    const DType dt = m.dtype_;

    NormParams norm = layer_norms(NormKind::kLayerNorm, t, h, cfg.norm_eps, dt);

    const void* attn_in = m.hidden_.data();
    if (cfg.pre_norm) {
      NvtxRange r("attention norm");
      norm.x = index_ == 0 ? nullptr : m.fc2_out_.data();
      norm.residual = m.hidden_.data();
      norm.gamma = attn_norm_.gamma_ptr;
      norm.beta = attn_norm_.beta_ptr;
      norm.out = m.normed_.data();
      sparsellm::norm(norm, stream);
      attn_in = m.normed_.data();
    }
    void* proj = m.qkv_.data();  // q, k, v are dead after attention
    {
      SelfAttentionStep step;
      step.x = attn_in;
      step.qkv = m.qkv_.data();
      step.attn = m.attn_.data();
      step.out = proj;
      step.ws = &m.ws_;
      step.comm = m.comm_;
      step.dtype = dt;
      attn_.forward(step, b, cache.layer(index_), stream);
    }
    const void* ffn_in;
    {
      // Pre-LN: h += proj, x = LN2(h).  Post-LN: h = LN1(h + proj), x = h.
      NvtxRange r("residual norm");
      const NormWeights& w = cfg.pre_norm ? ffn_norm_ : attn_norm_;
      norm.x = proj;
      norm.residual = m.hidden_.data();
      norm.gamma = w.gamma_ptr;
      norm.beta = w.beta_ptr;
      norm.out = cfg.pre_norm ? m.normed_.data() : m.hidden_.data();
      sparsellm::norm(norm, stream);
      ffn_in = norm.out;
    }
    {
      NvtxRange r("ffn");
      // ReLU (every OPT checkpoint's) in fc1's epilogue; others by their own kernel.
      const bool relu = cfg.activation == Activation::kRelu;
      fc1_->forward(ffn_in, m.ffn_.data(), t, m.ws_.linear, stream, relu);
      if (!relu) {
        ActivationParams act;
        act.x = m.ffn_.data();
        act.n = t * m.local_ffn_;
        act.kind = cfg.activation;
        act.dtype = dt;
        activation(act, stream);
      }
      fc2_->forward(m.ffn_.data(), m.fc2_out_.data(), t, m.ws_.linear, stream);
      if (m.comm_) m.comm_->all_reduce_sum(m.fc2_out_.data(), size_t(t * h), dt, stream);  // sum of the ranks' units
    }
    if (!cfg.pre_norm) {
      NvtxRange r("output norm");
      norm.x = m.fc2_out_.data();
      norm.residual = m.hidden_.data();
      norm.gamma = ffn_norm_.gamma_ptr;
      norm.beta = ffn_norm_.beta_ptr;
      norm.out = m.hidden_.data();
      sparsellm::norm(norm, stream);
    }
  }

 private:
  static std::string prefix(int index) { return "model.decoder.layers." + std::to_string(index) + "."; }

  std::vector<const Linear*> linears() const {
    std::vector<const Linear*> all = attn_.linears();
    all.insert(all.end(), {fc1_.get(), fc2_.get()});
    return all;
  }

  int index_;
  std::string range_name_;
  SelfAttention attn_;
  std::unique_ptr<Linear> fc1_, fc2_;
  NormWeights attn_norm_, ffn_norm_;
};

// --- model ----------------------------------------------------------------

OptModel::OptModel(const Checkpoint& ckpt, const OptConfig& cfg, int64_t max_tokens, int64_t max_outputs,
                   int32_t max_seq, cudaStream_t stream, const Communicator* comm)
    : config_(cfg), dtype_(ckpt.dtype()), max_tokens_(max_tokens), max_outputs_(max_outputs) {
  comm_ = check_model_args(ckpt, comm, max_tokens, max_outputs, "OPT");
  tp_ = ckpt.tp();
  tp_rank_ = ckpt.rank();
  SPARSELLM_CHECK_ARG(cfg.num_heads % tp_ == 0 && cfg.ffn_dim % tp_ == 0, ckpt.rank_file(), ": tp = ", tp_,
                      " must divide num_attention_heads (", cfg.num_heads, ") and ffn_dim (", cfg.ffn_dim, ")");
  local_heads_ = cfg.num_heads / tp_;
  local_width_ = local_heads_ * cfg.head_dim;
  local_ffn_ = cfg.ffn_dim / tp_;
  const int64_t h = cfg.hidden_size, e = cfg.embed_dim, v = cfg.vocab_size;
  const size_t es = dtype_size(dtype_);
  const bool projected = e != h;

  // Unit gamma for norms without learned parameters.
  {
    std::vector<uint16_t> ones(size_t(std::max(h, e)), one_bits(dtype_));
    ones_ = DeviceBuffer(ones.size() * es, "LayerNorm unit gamma");
    ones_.upload(ones.data(), ones.size() * es, stream);  // pageable: staged before returning
  }

  // Weights.
  {
    NvtxRange r("load weights");
    expect_shape(ckpt, "model.decoder.embed_tokens.weight", {v, e});
    embed_tokens_ = upload_dense(ckpt, "model.decoder.embed_tokens.weight", stream);
    expect_shape(ckpt, "model.decoder.embed_positions.weight", {int64_t(cfg.max_positions) + 2, h});
    embed_positions_ = upload_dense(ckpt, "model.decoder.embed_positions.weight", stream);
    weight_bytes_ += embed_tokens_.bytes() + embed_positions_.bytes();
    if (projected) {
      project_in_ = load_linear(ckpt, "model.decoder.project_in", false, false, h, e, stream);
      project_out_ = load_linear(ckpt, "model.decoder.project_out", false, false, e, h, stream);
      weight_bytes_ += project_in_->device_bytes() + project_out_->device_bytes();
    } else if (ckpt.has("model.decoder.project_in.weight") || ckpt.has("model.decoder.project_out.weight")) {
      throw FormatError(ckpt.rank_file() + ": holds project_in/project_out although word_embed_proj_dim equals "
                                           "hidden_size");
    }
    if (cfg.final_norm && cfg.norm_affine) {
      final_gamma_ = upload_vector(ckpt, "model.decoder.final_layer_norm.weight", h, stream);
      final_beta_ = upload_vector(ckpt, "model.decoder.final_layer_norm.bias", h, stream);
      weight_bytes_ += final_gamma_.bytes() + final_beta_.bytes();
    }
    if (cfg.tied_head) {
      lm_head_ = std::make_unique<Linear>(Linear::dense_view(embed_tokens_.data(), v, e, dtype_));
    } else {
      lm_head_ = load_linear(ckpt, "lm_head", false, false, v, e, stream);
      weight_bytes_ += lm_head_->device_bytes();
    }
    layers_.reserve(size_t(cfg.num_layers));
    for (int l = 0; l < cfg.num_layers; ++l) {
      layers_.push_back(std::make_unique<OptDecoderLayer>(ckpt, cfg, l, ones_, stream));
      weight_bytes_ += layers_.back()->weight_bytes(cfg, dtype_);
    }
    expect_no_extra_layers(ckpt, "model.decoder.layers." + std::to_string(cfg.num_layers) + ".fc1.weight",
                           cfg.num_layers);
  }

  // Activations and workspaces, sized once.
  ActivationAllocator alloc{dtype_};
  alloc(hidden_, max_tokens, h, "hidden states");
  alloc(normed_, max_tokens, h, "normed hidden states");
  alloc(qkv_, max_tokens, std::max<int64_t>(3 * int64_t(local_width_), h), "queries, keys and values");
  alloc(attn_, max_tokens, local_width_, "attention output");
  alloc(ffn_, max_tokens, local_ffn_, "FFN hidden");
  alloc(fc2_out_, max_tokens, h, "FFN output");
  alloc(last_, max_outputs, h, "output rows");
  alloc(last_normed_, max_outputs, h, "normed output rows");
  if (projected) {
    alloc(embed_tmp_, max_tokens, e, "token embeddings");
    alloc(last_proj_, max_outputs, e, "projected output rows");
  }
  workspace_bytes_ += alloc.bytes;

  size_t spmm_bytes = lm_head_->spmm_workspace_bytes(max_outputs);
  for (const auto& layer : layers_) spmm_bytes = std::max(spmm_bytes, layer->spmm_workspace_bytes(max_tokens));
  if (projected) {
    spmm_bytes = std::max(spmm_bytes, project_in_->spmm_workspace_bytes(max_tokens));
    spmm_bytes = std::max(spmm_bytes, project_out_->spmm_workspace_bytes(max_outputs));
  }
  workspace_bytes_ += ws_.allocate(max_tokens, local_heads_, cfg.head_dim, max_seq, spmm_bytes, stream);
}

OptModel::~OptModel() = default;

void OptModel::forward(const OptForwardBatch& b, const KvCache& cache, cudaStream_t stream) const {
  const OptConfig& cfg = config_;
  check_forward_batch(b, cache, max_tokens_, max_outputs_, cfg.max_positions, "OPT");
  const int64_t t = b.tokens_count, h = cfg.hidden_size, e = cfg.embed_dim;
  const bool projected = e != h;

  {
    NvtxRange r("embedding");
    EmbeddingParams emb;
    emb.table = embed_tokens_.data();
    emb.ids = b.tokens;
    emb.out = projected ? embed_tmp_.data() : hidden_.data();
    emb.n = t;
    emb.width = e;
    emb.rows = cfg.vocab_size;
    emb.dtype = dtype_;
    embedding(emb, stream);
    if (projected) project_in_->forward(embed_tmp_.data(), hidden_.data(), t, ws_.linear, stream);
    EmbeddingParams pos;
    pos.table = embed_positions_.data();
    pos.ids = b.place.position;
    pos.out = hidden_.data();
    pos.n = t;
    pos.width = h;
    pos.rows = int64_t(cfg.max_positions) + 2;
    pos.offset = 2;  // OPT's learned positions start at row 2
    pos.accumulate = true;
    pos.dtype = dtype_;
    embedding(pos, stream);
  }

  for (const auto& layer : layers_) layer->forward(*this, b, cache, stream);
  if (b.outputs == 0) return;  // a prefill chunk in which no prompt ends

  NvtxRange r("lm head");
  // The output rows of the residual stream (plus the pending FFN output of pre-LN models).
  gather_output_rows(hidden_.data(), cfg.pre_norm ? fc2_out_.data() : nullptr, b, h, last_.data(), dtype_, stream);
  const void* x = last_.data();
  if (cfg.final_norm) {
    NormParams norm;
    norm.x = last_.data();
    norm.gamma = cfg.norm_affine ? final_gamma_.data() : ones_.data();
    norm.beta = cfg.norm_affine ? final_beta_.data() : nullptr;
    norm.out = last_normed_.data();
    norm.n = b.outputs;
    norm.width = h;
    norm.eps = cfg.norm_eps;
    norm.dtype = dtype_;
    sparsellm::norm(norm, stream);
    x = last_normed_.data();
  }
  if (projected) {
    project_out_->forward(x, last_proj_.data(), b.outputs, ws_.linear, stream);
    x = last_proj_.data();
  }
  lm_head_->forward(x, b.logits, b.outputs, ws_.linear, stream);
}

}  // namespace sparsellm
