// The interface between the generation loop and a model family.
//
// A decoder-only model runs one forward over T packed tokens — a prefill
// chunk (many tokens of many sequences) or a decode step (one token per
// sequence) alike: it embeds the tokens, runs every layer (writing the
// tokens' keys and values into the KV cache at their (slot, position)), and
// writes the logits of the rows the caller asks for. The generator needs
// nothing else from a model but its sizes (DecoderShape, read from the
// checkpoint's config before anything is allocated), so a family is one
// class deriving DecoderModel plus one case in the two functions below.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/attention/kv_cache.h"
#include "layers/linear.h"
#include "runtime/device_buffer.h"
#include "runtime/checkpoint.h"
#include "runtime/kv_cache.h"
#include "sparsellm/types.h"

namespace sparsellm {

class Communicator;

// One forward over T packed tokens. All pointers are device memory.
struct ForwardBatch {
  const int32_t* tokens = nullptr;  // [T] token ids (< vocab)
  TokenPlacement place;             // [T] cache slot and position of each token
  int64_t tokens_count = 0;         // T ≤ max_tokens of the model's workspace
  int32_t max_positions = 0;        // bound on position + 1 over the T tokens
  const int32_t* out_rows = nullptr;  // [outputs] rows of the T whose logits are wanted
  int64_t outputs = 0;              // 0 … max_outputs (0: no logits, e.g. a mid-prompt chunk)
  void* logits = nullptr;           // [outputs, vocab] out
};

// What the generator sizes its buffers by (this rank's share where split).
struct DecoderShape {
  std::string architecture;       // "opt", "llama"
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;          // query heads of the whole model
  int32_t cache_kv_heads = 0;     // key/value heads this rank caches
  int32_t head_dim = 0;
  int32_t max_positions = 0;      // longest sequence the model supports
  int32_t eos_token_id = -1;      // −1: none
  int32_t bos_token_id = -1;
};

class DecoderModel {
 public:
  virtual ~DecoderModel() = default;
  virtual DType dtype() const = 0;
  virtual size_t weight_bytes() const = 0;     // weights on the device
  virtual size_t workspace_bytes() const = 0;  // activations and scratch
  // Whether decode steps fold the norms into the sparse projections (sparsellm/spmm.h: SpmmNormFold).
  virtual bool folds_norms() const { return false; }
  // Enqueues the forward on `stream` (no host synchronization, no allocation:
  // decode steps are captured into CUDA graphs).
  virtual void forward(const ForwardBatch& batch, const KvCache& cache, cudaStream_t stream) const = 0;
};

// The sizes of the checkpoint's model, from its config alone (no GPU needed).
// InvalidArgument for an architecture or setting the runtime does not support,
// FormatError for a malformed config; `where` (the config file) prefixes errors.
DecoderShape decoder_shape(const Checkpoint& checkpoint, const std::string& where);

// Uploads the checkpoint's model on `stream` (the caller synchronizes before
// closing the checkpoint), with activations for up to max_tokens tokens per
// forward, max_outputs logit rows and sequences of up to max_seq tokens. A
// checkpoint split for tp > 1 needs `comm` (tp ranks, this process's rank =
// the checkpoint's), which must outlive the model.
std::unique_ptr<DecoderModel> load_decoder_model(const Checkpoint& checkpoint, const std::string& where,
                                                 int64_t max_tokens, int64_t max_outputs, int32_t max_seq,
                                                 cudaStream_t stream, const Communicator* comm = nullptr);

// Checks what a family's constructor is given: 1 ≤ max_outputs ≤ max_tokens,
// and for a checkpoint split over tp > 1 ranks a communicator of tp ranks at
// the checkpoint's rank; `who` names the model in the InvalidArgument it
// throws. Returns the communicator the model uses (null when tp = 1).
const Communicator* check_model_args(const Checkpoint& checkpoint, const Communicator* comm, int64_t max_tokens,
                                     int64_t max_outputs, const char* who);

// Checks a forward's batch against the model's workspace (max_tokens,
// max_outputs), its cache and its position limit; `who` names the model in
// the InvalidArgument it throws.
void check_forward_batch(const ForwardBatch& batch, const KvCache& cache, int64_t max_tokens, int64_t max_outputs,
                         int32_t max_positions, const char* who);

// out[i, :] = residual[out_rows[i], :] (+ pending[out_rows[i], :] unless null),
// i < batch.outputs: the rows whose logits are wanted, with a last layer's
// branch output that has not been added to the residual stream yet.
void gather_output_rows(const void* residual, const void* pending, const ForwardBatch& batch, int64_t width,
                        void* out, DType dtype, cudaStream_t stream);

// Scratch a family's forward needs beside its activations, sized once at load.
struct ForwardWorkspaces {
  DeviceBuffer attention;      // attention's split-key partials
  size_t attention_bytes = 0;  // of which in use
  DeviceBuffer spmm, gemm;     // SpMM (zero-filled once) and cuBLASLt scratch
  LinearWorkspace linear;      // the two above, as every Linear takes them

  // Allocates them for forwards of up to max_tokens tokens and sequences of up
  // to max_seq, with `spmm_bytes` the largest SpMM workspace of the model's
  // linears; returns the bytes allocated.
  size_t allocate(int64_t max_tokens, int32_t heads, int32_t head_dim, int32_t max_seq, size_t spmm_bytes,
                  cudaStream_t stream);
};

// Allocates a model's activations, each [rows, width] of `dtype` (named
// "activations: " + what), and counts their bytes.
struct ActivationAllocator {
  DType dtype = DType::kFloat16;
  size_t bytes = 0;
  void operator()(DeviceBuffer& buf, int64_t rows, int64_t width, const char* what);
};

}  // namespace sparsellm
