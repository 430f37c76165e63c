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
// Tensor parallelism (later): q/k/v/fc1 split by rows (heads / FFN columns
// per rank), out_proj/fc2 by columns followed by an all-reduce of `proj` and
// `fc2_out` before their residual adds; row-parallel biases live on rank 0.
// This build accepts tp = 1 only.
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

// One forward over T packed tokens. All pointers are device memory.
struct OptForwardBatch {
  const int32_t* tokens = nullptr;  // [T] token ids (< vocab)
  TokenPlacement place;             // [T] cache slot and position of each token
  int64_t tokens_count = 0;         // T ≤ max_tokens of the model's workspace
  int32_t max_positions = 0;        // bound on position + 1 over the T tokens
  const int32_t* out_rows = nullptr;  // [outputs] rows of the T whose logits are wanted
  int64_t outputs = 0;              // 0 … max_outputs (0: no logits, e.g. a mid-prompt chunk)
  void* logits = nullptr;           // [outputs, vocab] out
};

class OptDecoderLayer;

class OptModel {
 public:
  // Uploads every weight of `checkpoint` on `stream` (the caller synchronizes
  // before closing the checkpoint) and allocates the activations for up to
  // max_tokens tokens per forward and max_outputs logit rows.
  OptModel(const Checkpoint& checkpoint, const OptConfig& config, int64_t max_tokens, int64_t max_outputs,
           int32_t max_seq, cudaStream_t stream);
  ~OptModel();
  OptModel(const OptModel&) = delete;
  OptModel& operator=(const OptModel&) = delete;

  const OptConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

  // Enqueues the forward on `stream`: embeddings, every layer (writing the
  // batch's keys and values into `cache`), and the LM head at batch.out_rows.
  void forward(const OptForwardBatch& batch, const KvCache& cache, cudaStream_t stream) const;

 private:
  OptConfig config_;
  DType dtype_ = DType::kFloat16;
  int64_t max_tokens_ = 0, max_outputs_ = 0;
  size_t weight_bytes_ = 0, workspace_bytes_ = 0;

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
  DeviceBuffer q_, k_, v_;   // [T, H] each; q_ also holds out_proj's output
  DeviceBuffer attn_;        // [T, H] attention output
  DeviceBuffer ffn_;         // [T, F]
  DeviceBuffer fc2_out_;     // [T, H]
  DeviceBuffer embed_tmp_;   // [T, E] (E ≠ H only)
  DeviceBuffer last_;        // [outputs, H] gathered output rows
  DeviceBuffer last_normed_; // [outputs, H]
  DeviceBuffer last_proj_;   // [outputs, E] (E ≠ H only)
  DeviceBuffer attention_ws_;
  DeviceBuffer spmm_ws_, gemm_ws_;
  size_t attention_ws_bytes_ = 0;
  LinearWorkspace linear_ws_;

  friend class OptDecoderLayer;
};

}  // namespace sparsellm
