// Text generation with a converted checkpoint (docs/checkpoint.md) on one GPU,
// or on one GPU per process under mpirun (LLMOptions::tp, sparsellm/tensor_parallel.h).
//
//   sparsellm::LLM llm("opt-1.3b-s70", {/*max_batch=*/8});
//   sparsellm::GenerationConfig config;
//   config.max_new_tokens = 32;
//   sparsellm::GenerationOutput out = llm.generate({{2, 100, 200}, {2, 300}}, config);
//   // out.sequences[i].tokens: the new tokens of prompt i
//
// The constructor loads and validates the checkpoint, uploads every weight
// (dense through cuBLASLt or sparse, as stored per tensor) and allocates all
// device memory once: the KV cache for max_batch sequences of max_seq_len
// tokens, the activations of a prefill chunk, logits and sampling state.
// generate() then allocates nothing on the device; each decode step is one
// CUDA graph launch (captured once per batch size) with no host round trip,
// and the tokens come back in one copy at the end.
//
// Requests are checked before any GPU work: an invalid one throws
// InvalidArgument and leaves the LLM usable. Every prompt needs
// prompt length + max_new_tokens ≤ max_seq_len.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsellm/tensor_parallel.h"

namespace sparsellm {

struct LLMOptions {
  int max_batch = 8;             // sequences per generate call (1 … 1024)
  int max_seq_len = 0;           // prompt + generated tokens; 0: min(max_position_embeddings, 2048)
  bool use_cuda_graphs = true;   // capture decode steps (off when SPARSELLM_DEBUG_SYNC=1)
  int max_prefill_tokens = 0;    // tokens per prefill chunk; 0: min(max_batch · max_seq_len, 4096)
  TensorParallelOptions tp;      // this process's rank of a tensor-parallel run (sparsellm/tensor_parallel.h);
                                 // the default: one process, tp = 1 checkpoints
};

struct GenerationConfig {
  int max_new_tokens = 64;       // ≥ 1
  float temperature = 0.0f;      // 0: greedy (argmax); > 0: sampling
  int top_k = 0;                 // 0: no limit
  float top_p = 1.0f;            // in (0, 1]; 1: no limit
  uint64_t seed = 0;             // sequence i draws from a stream derived from (seed, i)
  bool stop_at_eos = true;       // stop a sequence at the model's eos_token_id
};

enum class FinishReason : int { kEos = 1, kLength = 2 };

struct SequenceOutput {
  std::vector<int32_t> tokens;   // generated tokens (the EOS token included when it stopped there)
  FinishReason finish_reason = FinishReason::kLength;
};

struct GenerationOutput {
  std::vector<SequenceOutput> sequences;  // one per prompt, in order
  double prefill_ms = 0.0;       // prompts through the model and the first token sampled
  double decode_ms = 0.0;        // all decode steps (GPU time between two events)
  int decode_steps = 0;          // decode steps run (may exceed the last useful one by a few
                                 // when every sequence stopped early at EOS)
  int graph_steps = 0;           // of which replayed from a CUDA graph (the first step at a new
                                 // batch size runs eagerly and is captured)
  std::string graph_error;       // non-empty when capture failed and steps run eagerly
};

struct ModelInfo {
  std::string architecture;      // "opt" or "llama"
  std::string dtype;             // "float16" or "bfloat16"
  int vocab_size = 0, hidden_size = 0, num_layers = 0, num_heads = 0;
  int max_position_embeddings = 0;
  int eos_token_id = -1, bos_token_id = -1;  // −1: none
  int max_batch = 0, max_seq_len = 0;        // as allocated
  int tp_rank = 0, tp_world = 1;             // this process's tensor-parallel rank and the number of ranks
  bool folds_norms = false;  // decode steps fold the RMSNorms into the sparse projections (Llama, tp = 1,
                             // every projection sparse; SPARSELLM_FOLD_NORMS=0 turns it off)
};

class LLM {
 public:
  // Loads `checkpoint_dir` on the current CUDA device. Throws DeviceError
  // without a usable GPU, FormatError for a missing, truncated or inconsistent
  // checkpoint (naming the file and tensor), InvalidArgument for an
  // architecture or setting this runtime does not support (a checkpoint whose
  // tp differs from options.tp.world included) or bad options, OutOfMemory
  // when the model does not fit. With options.tp.world > 1 every rank
  // constructs its LLM with the same arguments and calls generate() with the
  // same prompts and config (the ranks run the same steps in lockstep).
  explicit LLM(const std::string& checkpoint_dir, const LLMOptions& options = LLMOptions());
  ~LLM();
  LLM(LLM&&) noexcept;
  LLM& operator=(LLM&&) noexcept;
  LLM(const LLM&) = delete;
  LLM& operator=(const LLM&) = delete;

  // prompts: 1 … max_batch token-id sequences, each non-empty with ids in
  // [0, vocab_size). Blocks until the tokens are on the host. Not reentrant:
  // concurrent calls on one LLM are serialized.
  GenerationOutput generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& config);

  // The logits of each prompt's last token after the prefill, as float:
  // [prompts.size() · vocab_size], row-major. Same checks as generate().
  std::vector<float> prompt_logits(const std::vector<std::vector<int32_t>>& prompts);

  const ModelInfo& info() const;
  size_t weight_bytes() const;       // weights on the device
  size_t allocated_bytes() const;    // everything this LLM allocated (weights, KV cache, workspaces)
  size_t peak_device_bytes() const;  // highest device memory in use seen (cudaMemGetInfo), whole device

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparsellm
