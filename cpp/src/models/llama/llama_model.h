// The Llama family (Touvron et al. 2023; Hugging Face `LlamaForCausalLM`, and
// the same layout under model_type "mistral" and "qwen2") as a sequence of
// kernels over packed tokens:
//
//   h      = embed_tokens[id]                                   [T, H]
//   layer (pre-norm):
//     h += o_proj(Attn(RMSNorm1(h)))
//     h += down_proj(silu(gate_proj(x)) · up_proj(x)),  x = RMSNorm2(h)
//   Attn(x): q = rope(q_proj(x)) [T, heads · d], k = rope(k_proj(x)), v = v_proj(x) [T, kv_heads · d]
//            out[t, h] = softmax_causal(q_h · K_gᵀ / √d) V_g,  g = h / (heads / kv_heads)  (GQA)
//   logits = RMSNorm_final(h) · W_headᵀ at the rows whose logits are wanted
//            (W_head = embed_tokens when tie_word_embeddings and no lm_head is stored)
//
// RoPE is Hugging Face's rotate-half layout with rope_theta and the config's
// rope scaling (none, "linear", "llama3"), from an fp32 table of inverse
// frequencies computed on the host at load time (kernels/rope/rope.h).
// Biases: none in Llama unless attention_bias (q, k, v, o) / mlp_bias (gate,
// up, down); Qwen2 has q, k, v biases.
//
// Fusions as in OPT's pre-LN path: the residual add goes into the RMSNorm
// that follows it; down_proj's output stays pending and is added by the next
// layer's first RMSNorm (or by the gather of the output rows after the last
// layer). SiLU and the gate · up product are one kernel. At decode widths
// (up to kSpmmNormFoldMaxRows tokens), with every projection sparse and
// tp = 1, the RMSNorms fold into the SpMMs around them instead
// (sparsellm/spmm.h: SpmmNormFold): o_proj and down_proj add into h and write
// the next norm's input unscaled, q/k/v and gate/up scale their outputs.
//
// Tensor parallelism (checkpoint tp = N > 1, a Communicator of N ranks):
// q/k/v/gate/up are split by rows (heads/N query heads and kv_heads/N whole
// KV heads — so whole GQA groups — and F/N FFN units per rank), o_proj and
// down_proj by columns, so they produce partial sums [T, H] that an
// all-reduce (sum) on the compute stream completes before their residual
// adds. Row-parallel biases live on rank 0 alone. Embeddings, norms and the
// LM head are replicated: every rank computes the same logits.
#pragma once

#include <cuda_runtime.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/rope/rope.h"
#include "layers/linear.h"
#include "models/decoder_model.h"
#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"
#include "runtime/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

// The runtime's view of a Hugging Face LlamaConfig (model_config of config.json).
struct LlamaConfig {
  std::string model_type = "llama";  // "llama", "mistral", "qwen2"
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;           // H
  int32_t intermediate_size = 0;     // F
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;          // num_key_value_heads (default: num_heads)
  int32_t head_dim = 0;              // head_dim (default: H / heads)
  int32_t max_positions = 0;         // max_position_embeddings
  int32_t sliding_window = 0;        // 0: none; else sequences must fit in the window
  float norm_eps = 1e-6f;            // rms_norm_eps
  RopeConfig rope;
  bool tied_head = false;            // tie_word_embeddings
  bool qkv_bias = false, o_bias = false, mlp_bias = false;
  int32_t eos_token_id = -1;         // −1: none
  int32_t bos_token_id = -1;

  // Parses and checks `model_config`; `where` (the config file) prefixes every
  // error. Unsupported settings (activation other than SiLU, unknown rope
  // type, partial rotary, head_dim the attention kernel lacks) are InvalidArgument.
  static LlamaConfig from_json(const nlohmann::json& model_config, const std::string& where);
};

class LlamaDecoderLayer;
class Communicator;

class LlamaModel final : public DecoderModel {
 public:
  // Uploads every weight of this rank of `checkpoint` on `stream` (the caller
  // synchronizes before closing the checkpoint) and allocates the activations
  // for up to max_tokens tokens per forward and max_outputs logit rows. A
  // checkpoint split for tp > 1 needs `comm` (tp ranks, this process's rank =
  // the checkpoint's); it must outlive the model.
  LlamaModel(const Checkpoint& checkpoint, const LlamaConfig& config, int64_t max_tokens, int64_t max_outputs,
             int32_t max_seq, cudaStream_t stream, const Communicator* comm = nullptr);
  ~LlamaModel() override;
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const LlamaConfig& config() const { return config_; }
  DType dtype() const override { return dtype_; }
  size_t weight_bytes() const override { return weight_bytes_; }
  size_t workspace_bytes() const override { return workspace_bytes_; }
  bool folds_norms() const override { return folds_norms_; }

  void forward(const ForwardBatch& batch, const KvCache& cache, cudaStream_t stream) const override;

 private:
  LlamaConfig config_;
  DType dtype_ = DType::kFloat16;
  const Communicator* comm_ = nullptr;         // null when tp = 1
  int32_t heads_ = 0, kv_heads_ = 0, ffn_ = 0;  // this rank's shares
  int64_t max_tokens_ = 0, max_outputs_ = 0;
  size_t weight_bytes_ = 0, workspace_bytes_ = 0;
  bool folds_norms_ = false;  // decode steps fold the RMSNorms into the projections (LlamaDecoderLayer::forward)

  DeviceBuffer embed_tokens_;  // [vocab, H]
  DeviceBuffer final_gamma_;   // [H]
  DeviceBuffer inv_freq_;      // [head_dim / 2] fp32
  std::unique_ptr<Linear> lm_head_;  // [vocab, H]
  std::vector<std::unique_ptr<LlamaDecoderLayer>> layers_;

  // Activations, [rows, width] row-major.
  DeviceBuffer hidden_;      // [T, H] the residual stream
  DeviceBuffer normed_;      // [T, H] RMSNorm output
  DeviceBuffer qkv_;         // [T, (heads + 2 · kv_heads) · d] the projections (SelfAttentionStep::qkv)
  DeviceBuffer attn_;        // [T, heads · d] attention output
  DeviceBuffer gate_up_;     // [T, 2F] gate and up projections
  DeviceBuffer act_;         // [T, F] silu(gate) · up
  DeviceBuffer branch_;      // [T, H] o_proj output, then down_proj output (pending)
  DeviceBuffer last_;        // [outputs, H] gathered output rows
  DeviceBuffer last_normed_; // [outputs, H]
  DeviceBuffer norm_sumsq_;  // [2][ceil(H / 128), kSpmmNormFoldMaxRows] fp32, where the norms fold
  ForwardWorkspaces ws_;

  friend class LlamaDecoderLayer;
};

}  // namespace sparsellm
