// The generation loop: prefill in chunks, then decode steps replayed from
// CUDA graphs, on one stream owned by the generator.
//
//   generate(prompts, config):
//     check the request on the host (nothing is enqueued for a bad one)
//     one H2D copy of the request (pinned → device): packed prompt tokens,
//       their positions and slots, per-sequence sampling parameters and state
//     prefill: for each chunk of ≤ max_prefill_tokens packed tokens,
//       DecoderModel::forward writes the chunk's K/V into the cache and the logits
//       of the prompts that end in it
//     sample the first token; bookkeeping (decode_bookkeeping.h)
//     decode step × (max_new_tokens − 1), each = forward of one token per
//       sequence (T = batch) → sample → bookkeeping, replayed as a graph
//     one D2H copy of the tokens, one stream synchronization
//
// Early stop: every kPollInterval steps the all_finished flag is copied into
// pinned memory behind an event; the host reads a copy only once its event
// has completed, so it never waits on the GPU unless it is more than
// kPollInterval · kPollSlots steps ahead, and then the GPU still has that
// many steps queued.
//
// Device memory is allocated in the constructor only: weights, KV cache for
// max_batch × max_seq_len, activations for one prefill chunk, logits
// [max_batch, vocab], request state. Graphs are captured once per batch size.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "models/decoder_model.h"
#include "runtime/device_buffer.h"
#include "runtime/kv_cache.h"
#include "sparsellm/llm.h"

namespace sparsellm {

class Communicator;

class Generator {
 public:
  Generator(const std::string& checkpoint_dir, const LLMOptions& options);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  GenerationOutput generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& config);
  std::vector<float> prompt_logits(const std::vector<std::vector<int32_t>>& prompts);

  const ModelInfo& info() const { return info_; }
  size_t weight_bytes() const { return model_->weight_bytes(); }
  size_t allocated_bytes() const { return allocated_bytes_; }
  size_t peak_device_bytes() const { return peak_device_bytes_; }

 private:
  // Pointers into state_ (device) and the same offsets in host_ (pinned).
  struct Layout {
    size_t request_bytes = 0;  // [0, request_bytes): per-request state, uploaded at once
    size_t prefill_offset = 0, prefill_bytes = 0;  // packed prompt arrays, runtime offsets
    size_t iota_offset = 0, next_token_offset = 0, out_tokens_offset = 0, total_bytes = 0;
    // Offsets (bytes) of the request section's arrays.
    size_t prompt_len = 0, generated = 0, finish_reason = 0, current_token = 0, position = 0, top_k = 0,
           temperature = 0, top_p = 0, seed = 0, scalars = 0;
  };
  enum Scalar { kMaxNewTokens = 0, kEosToken = 1, kStep = 2, kAllFinished = 3, kScalars = 4 };

  template <typename T>
  T* dev(size_t offset) const { return reinterpret_cast<T*>(static_cast<char*>(state_.data()) + offset); }
  template <typename T>
  T* host(size_t offset) const { return reinterpret_cast<T*>(static_cast<char*>(host_) + offset); }

  void check_request(const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens) const;
  // Fills the pinned request, enqueues its upload; returns the packed token count.
  int64_t stage_request(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& config);
  void prefill(const std::vector<std::vector<int32_t>>& prompts, int64_t total_tokens);
  void sample_and_record(int batch);
  void decode_step(int batch);
  void launch_decode_step(int batch);
  void capture_decode_step(int batch);
  int decode_loop(int batch, int steps);
  void record_peak();
  // Host waits on stream_: through the communicator under tensor parallelism
  // (NCCL errors polled, a dead peer aborts after its timeout), else plain.
  void wait_stream(const char* what);
  void drain_stream() noexcept;  // the same for error paths and teardown: never throws, never hangs
  void release() noexcept;  // frees everything; safe on a partly constructed generator

  LLMOptions options_;
  ModelInfo info_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> comm_;  // tensor parallelism (options.tp.world > 1); outlives model_
  std::unique_ptr<DecoderModel> model_;
  KvCache cache_;
  DeviceBuffer logits_;  // [max_batch, vocab]
  DeviceBuffer state_;   // Layout
  void* host_ = nullptr; // pinned mirror of state_
  Layout layout_;
  int64_t prefill_chunk_ = 0;
  bool graphs_enabled_ = true;
  std::map<int, cudaGraphExec_t> graphs_;  // by batch size
  int graph_steps_ = 0;                    // of the current request
  std::string graph_error_;                // why capture was given up, if it was
  cudaEvent_t ev_start_ = nullptr, ev_prefill_ = nullptr, ev_end_ = nullptr;
  static constexpr int kPollInterval = 4, kPollSlots = 4;
  cudaEvent_t poll_events_[kPollSlots] = {};
  int32_t* poll_flags_ = nullptr;  // pinned [kPollSlots]
  size_t allocated_bytes_ = 0, peak_device_bytes_ = 0;
  std::mutex mutex_;
};

}  // namespace sparsellm
