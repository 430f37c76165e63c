// OPT (Zhang et al. 2022, Hugging Face `OPTForCausalLM`) as a sequence of
// kernels over packed tokens:
//
//   e      = embed_tokens[id]                       [T, E]   (E = word_embed_proj_dim)
//   h      = project_in(e) (when E ≠ H) + embed_positions[position + 2]   [T, H]
//   layer (pre-LN, do_layer_norm_before):           layer (post-LN, OPT-350m):
//     h += Attn(LN1(h));  h += FFN(LN2(h))            h = LN1(h + Attn(h));  h = LN2(h + FFN(h))
//   Attn(x) = out_proj(softmax_causal(q kᵀ / √d) v),  q, k, v = {q,k,v}_proj(x), per head
//   FFN(x)  = fc2(act(fc1(x)))                        act = relu | gelu (activation_function)
//   out    = project_out(LN_final(h)) at the rows whose logits are wanted
//            (LN_final only for pre-LN models without _remove_final_layer_norm;
//             project_out only when E ≠ H)
//   logits = out · W_headᵀ                           [outputs, vocab]  (W_head = embed_tokens when tied)
//
// Every linear is a `Linear` (dense through cuBLASLt, or sparse through the
// SpMM of its format, as the checkpoint says per tensor). Keys and values go
// to the KV cache at (slot, position) before attention, so one forward serves
// a prefill chunk (many tokens of many sequences, packed) and a decode step
// (one token per sequence) alike.
//
// Fusions: the residual add goes into the LayerNorm that follows it; in
// pre-LN models FC2's output stays pending and is added by the next layer's
// first LayerNorm (or by the gather of the output rows after the last layer),
// so a layer costs two norm launches and no separate add.
//
// Tensor parallelism (checkpoint tp = N > 1, a Communicator of N ranks): rank
// r holds heads [r·heads/N, (r+1)·heads/N) of q/k/v (rows of their weights
// and biases), FFN units [r·F/N, (r+1)·F/N) of fc1, and the matching input
// columns of out_proj and fc2, so attention and the activation run on local
// heads/units only and out_proj / fc2 produce partial sums [T, H]; an
// all-reduce (sum) of `proj` and `fc2_out` on the compute stream completes
// them before their residual adds. Their biases live on rank 0 alone (split
// "rank0"), so each is added exactly once. Embeddings, norms and the LM head
// are replicated: every rank computes the same logits.
#pragma once

#include <cuda_runtime.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/activation/activation.h"
#include "kernels/attention/kv_cache.h"
#include "layers/linear.h"
#include "models/decoder_model.h"
#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"
#include "runtime/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

// The runtime's view of a Hugging Face OPTConfig (model_config of config.json).
struct OptConfig {
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;          // H
  int32_t embed_dim = 0;            // word_embed_proj_dim (E)
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;             // H / heads
  int32_t ffn_dim = 0;
  int32_t max_positions = 0;        // max_position_embeddings
  bool pre_norm = true;             // do_layer_norm_before
  bool final_norm = true;           // pre_norm && !_remove_final_layer_norm
  bool norm_affine = true;          // layer_norm_elementwise_affine
  bool bias = true;                 // enable_bias
  bool tied_head = true;            // tie_word_embeddings
  Activation activation = Activation::kRelu;
  int32_t eos_token_id = -1;        // −1: none
  int32_t bos_token_id = -1;
  float norm_eps = 1e-5f;           // torch.nn.LayerNorm's default, as OPT uses

  // Parses and checks `model_config`; `where` (the config file) prefixes every
  // error. Unsupported settings are InvalidArgument.
  static OptConfig from_json(const nlohmann::json& model_config, const std::string& where);
};

// One forward over T packed tokens (models/decoder_model.h).
using OptForwardBatch = ForwardBatch;

class OptDecoderLayer;
class Communicator;

class OptModel final : public DecoderModel {
 public:
  // Uploads every weight of `checkpoint` on `stream` (the caller synchronizes
  // before closing the checkpoint) and allocates the activations for up to
  // max_tokens tokens per forward and max_outputs logit rows. A checkpoint
  // split for tp > 1 needs `comm` (tp ranks, this process's rank = the
  // checkpoint's); it must outlive the model.
  OptModel(const Checkpoint& checkpoint, const OptConfig& config, int64_t max_tokens, int64_t max_outputs,
           int32_t max_seq, cudaStream_t stream, const Communicator* comm = nullptr);
  ~OptModel() override;
  OptModel(const OptModel&) = delete;
  OptModel& operator=(const OptModel&) = delete;

  const OptConfig& config() const { return config_; }
  DType dtype() const override { return dtype_; }
  size_t weight_bytes() const override { return weight_bytes_; }
  size_t workspace_bytes() const override { return workspace_bytes_; }

  // Enqueues the forward on `stream`: embeddings, every layer (writing the
  // batch's keys and values into `cache`), and the LM head at batch.out_rows.
  void forward(const OptForwardBatch& batch, const KvCache& cache, cudaStream_t stream) const override;

 private:
  OptConfig config_;
  DType dtype_ = DType::kFloat16;
  int64_t max_tokens_ = 0, max_outputs_ = 0;
  size_t weight_bytes_ = 0, workspace_bytes_ = 0;
  // Tensor parallelism: this rank's share (the whole model when tp = 1).
  const Communicator* comm_ = nullptr;  // null when tp = 1
  int32_t tp_rank_ = 0, tp_ = 1;
  int32_t local_heads_ = 0;       // heads / tp
  int32_t local_width_ = 0;       // Hl = local_heads · head_dim
  int32_t local_ffn_ = 0;         // Fl = ffn_dim / tp

  DeviceBuffer embed_tokens_;     // [vocab, E]
  DeviceBuffer embed_positions_;  // [max_positions + 2, H]
  std::unique_ptr<Linear> project_in_, project_out_;  // E → H, H → E (E ≠ H only)
  DeviceBuffer final_gamma_, final_beta_;             // [H] (final_norm only)
  DeviceBuffer ones_;                                 // [max(H, E)] gamma of non-affine norms
  std::unique_ptr<Linear> lm_head_;                   // [vocab, E]
  std::vector<std::unique_ptr<OptDecoderLayer>> layers_;

  // Activations, [rows, width] row-major.
  DeviceBuffer hidden_;      // [T, H] the residual stream
  DeviceBuffer normed_;      // [T, H] LayerNorm output (pre-LN)
  DeviceBuffer qkv_;         // [T, max(3 Hl, H)]: the projections (SelfAttentionStep::qkv),
                             // then out_proj's output [T, H]
  DeviceBuffer attn_;        // [T, Hl] attention output
  DeviceBuffer ffn_;         // [T, Fl]
  DeviceBuffer fc2_out_;     // [T, H]
  DeviceBuffer embed_tmp_;   // [T, E] (E ≠ H only)
  DeviceBuffer last_;        // [outputs, H] gathered output rows
  DeviceBuffer last_normed_; // [outputs, H]
  DeviceBuffer last_proj_;   // [outputs, E] (E ≠ H only)
  ForwardWorkspaces ws_;

  friend class OptDecoderLayer;
};

}  // namespace sparsellm
