// The generation loop (see generator.h).
#include "runtime/generator.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "comm/communicator.h"
#include "comm/mpi_bootstrap.h"
#include "common/check.h"
#include "kernels/sampling/sampling.h"
#include "runtime/checkpoint.h"
#include "runtime/decode_bookkeeping.h"
#include "runtime/nvtx_range.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

constexpr int kDefaultMaxSeq = 2048;
constexpr int64_t kDefaultPrefillChunk = 4096;

size_t align_up(size_t x, size_t a = 256) { return (x + a - 1) / a * a; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Sequence i of a request draws from its own Philox stream.
uint64_t sequence_seed(uint64_t seed, size_t i) { return splitmix64(seed ^ splitmix64(uint64_t(i))); }

}  // namespace

Generator::Generator(const std::string& dir, const LLMOptions& options) : options_(options) {
  NvtxRange range("load");
  // The checkpoint, its config and the options are checked before the GPU is
  // touched: a bad checkpoint is reported as such on any machine.
  // Tensor parallelism: checkpoint tp = world, divisible heads / FFN, this rank's file present.
  check_tensor_parallel(dir, options.tp.rank, options.tp.world);
  std::unique_ptr<Checkpoint> ckpt = Checkpoint::open(dir, options.tp.rank);
  const std::string where = dir + "/config.json";
  const DecoderShape cfg = decoder_shape(*ckpt, where);  // the architecture dispatch (models/decoder_model.h)

  SPARSELLM_CHECK_ARG(options.max_batch >= 1 && options.max_batch <= kMaxBookkeepingBatch,
                      "LLM: max_batch must be in [1, ", kMaxBookkeepingBatch, "], got ", options.max_batch);
  if (options_.max_seq_len == 0) options_.max_seq_len = std::min(cfg.max_positions, kDefaultMaxSeq);
  SPARSELLM_CHECK_ARG(options_.max_seq_len >= 2 && options_.max_seq_len <= cfg.max_positions, "LLM: max_seq_len ",
                      options_.max_seq_len, " must be in [2, max_position_embeddings = ", cfg.max_positions, "]");
  SPARSELLM_CHECK_ARG(options.max_prefill_tokens >= 0, "LLM: max_prefill_tokens must be ≥ 0 (0: default), got ",
                      options.max_prefill_tokens);
  const int64_t max_batch = options_.max_batch, max_seq = options_.max_seq_len;
  prefill_chunk_ = options.max_prefill_tokens > 0 ? options.max_prefill_tokens
                                                  : std::min(max_batch * max_seq, kDefaultPrefillChunk);
  prefill_chunk_ = std::max<int64_t>(prefill_chunk_, max_batch);  // a decode step is one chunk of max_batch rows
  graphs_enabled_ = options.use_cuda_graphs && !detail::debug_sync_enabled();

  if (options.tp.device >= 0 && device_count() > 0) {  // this rank's GPU, before anything touches a device
    SPARSELLM_CHECK_ARG(options.tp.device < device_count(), "LLM: tp.device ", options.tp.device,
                        " does not exist; this machine has ", device_count(), " GPU(s)");
    SPARSELLM_CHECK_CUDA(cudaSetDevice(options.tp.device));
  }
  current_device();  // DeviceError without a usable GPU
  SPARSELLM_CHECK_CUDA(cudaGetDevice(&device_));

  info_.architecture = cfg.architecture;
  info_.dtype = dtype_name(ckpt->dtype());
  info_.vocab_size = cfg.vocab_size;
  info_.hidden_size = cfg.hidden_size;
  info_.num_layers = cfg.num_layers;
  info_.num_heads = cfg.num_heads;
  info_.max_position_embeddings = cfg.max_positions;
  info_.eos_token_id = cfg.eos_token_id;
  info_.bos_token_id = cfg.bos_token_id;
  info_.max_batch = options_.max_batch;
  info_.max_seq_len = options_.max_seq_len;
  info_.tp_rank = options.tp.rank;
  info_.tp_world = options.tp.world;

  SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    // Tensor parallelism: join the communicator, then load this rank's shard (any architecture).
    if (options.tp.world > 1) {
      comm_ = std::make_unique<Communicator>(options.tp);
      graphs_enabled_ = comm_->all_agree(graphs_enabled_, stream_);  // graphs on every rank or on none
    }
    model_ = load_decoder_model(*ckpt, where, prefill_chunk_, max_batch, options_.max_seq_len, stream_, comm_.get());
    info_.folds_norms = model_->folds_norms();
    cache_ = KvCache(cfg.num_layers, options_.max_batch, cfg.cache_kv_heads, options_.max_seq_len, cfg.head_dim,
                     ckpt->dtype());
    logits_ = DeviceBuffer(size_t(max_batch) * size_t(cfg.vocab_size) * dtype_size(ckpt->dtype()), "logits");

    // Request state, packed prompts, constants and outputs in one allocation.
    Layout& l = layout_;
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t offset = at;
      at = align_up(at + bytes);
      return offset;
    };
    const size_t b4 = size_t(max_batch) * 4, b8 = size_t(max_batch) * 8;
    l.prompt_len = take(b4);
    l.generated = take(b4);
    l.finish_reason = take(b4);
    l.current_token = take(b4);
    l.position = take(b4);
    l.top_k = take(b4);
    l.temperature = take(b4);
    l.top_p = take(b4);
    l.seed = take(b8);
    l.scalars = take(kScalars * 4);
    l.request_bytes = at;
    l.prefill_bytes = (3 * size_t(max_batch) * size_t(max_seq) + size_t(max_batch)) * 4;
    l.prefill_offset = take(l.prefill_bytes);
    l.iota_offset = take(b4);
    l.next_token_offset = take(b4);
    l.out_tokens_offset = take(size_t(max_batch) * size_t(max_seq) * 4);
    l.total_bytes = at;
    state_ = DeviceBuffer(l.total_bytes, "generation state");
    SPARSELLM_CHECK_CUDA(cudaMallocHost(&host_, l.total_bytes));
    std::memset(host_, 0, l.total_bytes);
    SPARSELLM_CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&poll_flags_), kPollSlots * sizeof(int32_t)));
    for (int i = 0; i < max_batch; ++i) host<int32_t>(l.iota_offset)[i] = i;
    SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(dev<int32_t>(l.iota_offset), host<int32_t>(l.iota_offset), b4,
                                         cudaMemcpyHostToDevice, stream_));
    for (cudaEvent_t* e : {&ev_start_, &ev_prefill_, &ev_end_}) SPARSELLM_CHECK_CUDA(cudaEventCreate(e));
    for (cudaEvent_t& e : poll_events_) SPARSELLM_CHECK_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream_));  // weights uploaded: the checkpoint may close
  } catch (...) {
    release();
    throw;
  }
  ckpt.reset();
  allocated_bytes_ = model_->weight_bytes() + model_->workspace_bytes() + cache_.bytes() + logits_.bytes() +
                     state_.bytes();
  record_peak();
}

void Generator::wait_stream(const char* what) {
  if (comm_)
    comm_->synchronize(stream_, what);  // polls NCCL errors; a dead peer throws instead of hanging
  else
    SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream_));
}

void Generator::drain_stream() noexcept {
  if (!stream_) return;
  if (comm_ && !comm_->failed() && !comm_->aborted()) {
    try {
      comm_->synchronize(stream_, "draining the stream");
      return;
    } catch (...) {  // failed: abort below
    }
  }
  if (comm_ && !comm_->aborted()) {
    // A peer failed: the graphs holding collectives go first (an abort waits for
    // them), then the abort releases NCCL's kernels and the stream drains.
    for (auto& [batch, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
    graphs_enabled_ = false;
    comm_->abort();
  }
  cudaStreamSynchronize(stream_);
}

void Generator::release() noexcept {
  drain_stream();
  for (auto& [batch, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  for (cudaEvent_t* e : {&ev_start_, &ev_prefill_, &ev_end_})
    if (*e) cudaEventDestroy(*e), *e = nullptr;
  for (cudaEvent_t& e : poll_events_)
    if (e) cudaEventDestroy(e), e = nullptr;
  if (poll_flags_) cudaFreeHost(poll_flags_), poll_flags_ = nullptr;
  if (host_) cudaFreeHost(host_), host_ = nullptr;
  model_.reset();
  cache_ = KvCache();
  logits_ = DeviceBuffer();
  state_ = DeviceBuffer();
  if (stream_) cudaStreamDestroy(stream_), stream_ = nullptr;
  comm_.reset();  // after every user of it
}

Generator::~Generator() {
  cudaSetDevice(device_);
  release();
}

void Generator::record_peak() {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
    peak_device_bytes_ = std::max(peak_device_bytes_, total_bytes - free_bytes);
}

void Generator::check_request(const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens) const {
  const int vocab = info_.vocab_size, max_seq = options_.max_seq_len;
  SPARSELLM_CHECK_ARG(!prompts.empty(), "generate: no prompts given");
  SPARSELLM_CHECK_ARG(int64_t(prompts.size()) <= options_.max_batch, "generate: ", prompts.size(),
                      " prompts, but this LLM was created for at most max_batch = ", options_.max_batch);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t>& p = prompts[i];
    SPARSELLM_CHECK_ARG(!p.empty(), "generate: prompt ", i, " is empty");
    SPARSELLM_CHECK_ARG(int64_t(p.size()) + max_new_tokens <= max_seq, "generate: prompt ", i, " has ", p.size(),
                        " tokens; with max_new_tokens = ", max_new_tokens, " it needs ",
                        int64_t(p.size()) + max_new_tokens, " positions, more than max_seq_len = ", max_seq);
    for (size_t j = 0; j < p.size(); ++j)
      SPARSELLM_CHECK_ARG(p[j] >= 0 && p[j] < vocab, "generate: prompt ", i, ", token ", j, ": id ", p[j],
                          " is outside the vocabulary [0, ", vocab, ")");
  }
}

int64_t Generator::stage_request(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& config) {
  const Layout& l = layout_;
  const int batch = int(prompts.size());
  int64_t total = 0;
  for (const auto& p : prompts) total += int64_t(p.size());
  int32_t* tokens = host<int32_t>(l.prefill_offset);
  int32_t* positions = tokens + total;
  int32_t* slots = positions + total;
  int32_t* rows = slots + total;  // [batch] chunk-local row of each prompt's last token
  int64_t at = 0;
  for (int b = 0; b < batch; ++b) {
    const auto& p = prompts[size_t(b)];
    const int32_t len = int32_t(p.size());
    for (int32_t j = 0; j < len; ++j, ++at) {
      tokens[at] = p[size_t(j)];
      positions[at] = j;
      slots[at] = b;
    }
    rows[b] = int32_t((at - 1) % prefill_chunk_);
    host<int32_t>(l.prompt_len)[b] = len;
    host<int32_t>(l.generated)[b] = 0;
    host<int32_t>(l.finish_reason)[b] = kDecodeRunning;
    host<int32_t>(l.current_token)[b] = p.back();
    host<int32_t>(l.position)[b] = len - 1;
    host<int32_t>(l.top_k)[b] = config.top_k;
    host<float>(l.temperature)[b] = config.temperature;
    host<float>(l.top_p)[b] = config.top_p;
    host<uint64_t>(l.seed)[b] = sequence_seed(config.seed, size_t(b));
  }
  int32_t* scalars = host<int32_t>(l.scalars);
  scalars[kMaxNewTokens] = config.max_new_tokens;
  scalars[kEosToken] = config.stop_at_eos ? info_.eos_token_id : -1;
  scalars[kStep] = 0;
  scalars[kAllFinished] = 0;
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(state_.data(), host_, l.request_bytes, cudaMemcpyHostToDevice, stream_));
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(dev<int32_t>(l.prefill_offset), tokens, size_t(3 * total + batch) * 4,
                                       cudaMemcpyHostToDevice, stream_));
  return total;
}

void Generator::prefill(const std::vector<std::vector<int32_t>>& prompts, int64_t total) {
  NvtxRange range("prefill");
  const int batch = int(prompts.size());
  int32_t* tokens = dev<int32_t>(layout_.prefill_offset);
  int32_t* positions = tokens + total;
  int32_t* slots = positions + total;
  int32_t* rows = slots + total;
  std::vector<int64_t> begin(size_t(batch) + 1, 0);  // packed offset of each prompt
  for (int b = 0; b < batch; ++b) begin[size_t(b) + 1] = begin[size_t(b)] + int64_t(prompts[size_t(b)].size());
  const size_t row_bytes = size_t(info_.vocab_size) * dtype_size(model_->dtype());
  int b0 = 0;  // first prompt whose last token is not yet processed
  for (int64_t c0 = 0; c0 < total; c0 += prefill_chunk_) {
    const int64_t c1 = std::min(c0 + prefill_chunk_, total);
    int b1 = b0;
    while (b1 < batch && begin[size_t(b1) + 1] <= c1) ++b1;  // prompts ending in [c0, c1)
    int32_t max_positions = 0;  // bound on position + 1 over the chunk
    for (int b = b0; b < batch && begin[size_t(b)] < c1; ++b)
      max_positions = std::max<int32_t>(max_positions, int32_t(std::min(begin[size_t(b) + 1], c1) - begin[size_t(b)]));
    ForwardBatch fb;
    fb.tokens = tokens + c0;
    fb.place.slot = slots + c0;
    fb.place.position = positions + c0;
    fb.tokens_count = c1 - c0;
    fb.max_positions = max_positions;
    fb.out_rows = rows + b0;
    fb.outputs = b1 - b0;
    fb.logits = static_cast<char*>(logits_.data()) + size_t(b0) * row_bytes;
    model_->forward(fb, cache_, stream_);
    b0 = b1;
  }
}

void Generator::sample_and_record(int batch) {
  NvtxRange range("sampling");
  const Layout& l = layout_;
  int32_t* scalars = dev<int32_t>(l.scalars);
  SamplingParams sp;
  sp.logits = logits_.data();
  sp.batch = batch;
  sp.vocab = info_.vocab_size;
  sp.logits_stride = info_.vocab_size;
  sp.temperature = dev<float>(l.temperature);
  sp.top_k = dev<int32_t>(l.top_k);
  sp.top_p = dev<float>(l.top_p);
  sp.seed = dev<uint64_t>(l.seed);
  sp.step = scalars + kStep;
  sp.next_token = dev<int32_t>(l.next_token_offset);
  sp.dtype = model_->dtype();
  sample_tokens(sp, stream_);

  BookkeepingParams bk;
  bk.next_token = dev<int32_t>(l.next_token_offset);
  bk.prompt_len = dev<int32_t>(l.prompt_len);
  bk.max_new_tokens = scalars + kMaxNewTokens;
  bk.eos_token = scalars + kEosToken;
  bk.current_token = dev<int32_t>(l.current_token);
  bk.position = dev<int32_t>(l.position);
  bk.generated = dev<int32_t>(l.generated);
  bk.finish_reason = dev<int32_t>(l.finish_reason);
  bk.out_tokens = dev<int32_t>(l.out_tokens_offset);
  bk.out_stride = options_.max_seq_len;
  bk.step = scalars + kStep;
  bk.all_finished = scalars + kAllFinished;
  bk.batch = batch;
  decode_bookkeeping(bk, stream_);
}

void Generator::decode_step(int batch) {
  const Layout& l = layout_;
  ForwardBatch fb;
  fb.tokens = dev<int32_t>(l.current_token);
  fb.place.slot = dev<int32_t>(l.iota_offset);  // sequence b lives in slot b
  fb.place.position = dev<int32_t>(l.position);
  fb.tokens_count = batch;
  fb.max_positions = options_.max_seq_len;  // fixed: the step's launch shape must not depend on positions
  fb.out_rows = dev<int32_t>(l.iota_offset);
  fb.outputs = batch;
  fb.logits = logits_.data();
  model_->forward(fb, cache_, stream_);
  sample_and_record(batch);
}

void Generator::launch_decode_step(int batch) {
  if (!graphs_enabled_) {
    decode_step(batch);
    return;
  }
  auto it = graphs_.find(batch);
  if (it != graphs_.end()) {
    SPARSELLM_CHECK_CUDA(cudaGraphLaunch(it->second, stream_));
    ++graph_steps_;
    return;
  }
  // First step at this batch size: run it eagerly (libraries set up their
  // handles and plans outside the capture), then capture the step for later.
  decode_step(batch);
  capture_decode_step(batch);
}

void Generator::capture_decode_step(int batch) {
  NvtxRange range("capture decode step");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::string error;
  cudaError_t status = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (status == cudaSuccess) {
    try {
      decode_step(batch);  // recorded, not run
    } catch (const std::exception& e) {
      error = e.what();
    }
    status = cudaStreamEndCapture(stream_, &graph);
    if (error.empty() && status != cudaSuccess) error = cudaGetErrorString(status);
    if (error.empty()) {
      status = cudaGraphInstantiate(&exec, graph, 0);
      if (status != cudaSuccess) error = cudaGetErrorString(status);
    }
    if (graph) cudaGraphDestroy(graph);
  } else {
    error = cudaGetErrorString(status);
  }
  if (comm_) {
    // Tensor parallelism: NCCL needs every rank to launch a collective the same
    // way (from a graph or not), so the ranks replay graphs only if all captured.
    if (!error.empty()) cudaGetLastError();
    if (!comm_->all_agree(error.empty(), stream_) && error.empty())
      error = "another tensor-parallel rank could not capture its decode step";
  }
  if (!error.empty()) {
    // Capture is an optimization: fall back to eager steps and say why (GenerationOutput).
    cudaGetLastError();
    if (exec) cudaGraphExecDestroy(exec);
    graphs_enabled_ = false;
    graph_error_ = "decode-step capture failed, running eagerly: " + error;
    return;
  }
  graphs_[batch] = exec;
}

int Generator::decode_loop(int batch, int steps) {
  NvtxRange range("decode");
  const int32_t* all_finished = dev<int32_t>(layout_.scalars) + kAllFinished;
  int head = 0, pending = 0;  // FIFO of poll slots in flight
  // Reads the oldest poll slot (after its event completed); true when every sequence had finished.
  auto pop = [&]() {
    const bool done = poll_flags_[head] != 0;
    head = (head + 1) % kPollSlots;
    --pending;
    return done;
  };
  int launched = 0;
  while (launched < steps) {
    launch_decode_step(batch);
    ++launched;
    if (launched % kPollInterval == 0 && launched < steps) {
      if (pending == kPollSlots) {  // host far ahead: wait for the oldest flag (the GPU keeps busy)
        if (comm_)
          comm_->wait(poll_events_[head], "decode step");
        else
          SPARSELLM_CHECK_CUDA(cudaEventSynchronize(poll_events_[head]));
        if (pop()) break;
      }
      const int slot = (head + pending) % kPollSlots;
      SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(&poll_flags_[slot], all_finished, sizeof(int32_t),
                                           cudaMemcpyDeviceToHost, stream_));
      SPARSELLM_CHECK_CUDA(cudaEventRecord(poll_events_[slot], stream_));
      ++pending;
    }
    bool done = false;
    // Early stop must hit the same step on every tensor-parallel rank (each
    // step holds collectives): with a communicator, flags are read only at the
    // deterministic point above, never as soon as they happen to be ready.
    while (pending > 0 && !comm_) {
      const cudaError_t status = cudaEventQuery(poll_events_[head]);
      if (status == cudaErrorNotReady) break;
      SPARSELLM_CHECK_CUDA(status);
      if ((done = pop())) break;
    }
    if (done) break;
  }
  return launched;
}

GenerationOutput Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                     const GenerationConfig& config) {
  std::lock_guard<std::mutex> lock(mutex_);
  SPARSELLM_CHECK_ARG(config.max_new_tokens >= 1, "generate: max_new_tokens must be at least 1, got ",
                      config.max_new_tokens);
  SPARSELLM_CHECK_ARG(std::isfinite(config.temperature) && config.temperature >= 0.0f,
                      "generate: temperature must be finite and ≥ 0 (0: greedy), got ", config.temperature);
  SPARSELLM_CHECK_ARG(config.top_k >= 0, "generate: top_k must be ≥ 0 (0: no limit), got ", config.top_k);
  SPARSELLM_CHECK_ARG(std::isfinite(config.top_p) && config.top_p > 0.0f && config.top_p <= 1.0f,
                      "generate: top_p must be in (0, 1], got ", config.top_p);
  check_request(prompts, config.max_new_tokens);
  SPARSELLM_CHECK_CUDA(cudaSetDevice(device_));

  const int batch = int(prompts.size());
  const Layout& l = layout_;
  GenerationOutput out;
  graph_steps_ = 0;
  try {
    NvtxRange range("generate");
    const int64_t total = stage_request(prompts, config);
    SPARSELLM_CHECK_CUDA(cudaEventRecord(ev_start_, stream_));
    prefill(prompts, total);
    sample_and_record(batch);
    SPARSELLM_CHECK_CUDA(cudaEventRecord(ev_prefill_, stream_));
    out.decode_steps = decode_loop(batch, config.max_new_tokens - 1);
    SPARSELLM_CHECK_CUDA(cudaEventRecord(ev_end_, stream_));
    // One copy back of the results (request section: generated counts, finish reasons).
    SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(host_, state_.data(), l.request_bytes, cudaMemcpyDeviceToHost, stream_));
    SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(host<int32_t>(l.out_tokens_offset), dev<int32_t>(l.out_tokens_offset),
                                         size_t(batch) * size_t(options_.max_seq_len) * 4, cudaMemcpyDeviceToHost,
                                         stream_));
    wait_stream("generate");
  } catch (...) {
    drain_stream();  // nothing of this request stays in flight
    throw;
  }
  float ms = 0.f;
  SPARSELLM_CHECK_CUDA(cudaEventElapsedTime(&ms, ev_start_, ev_prefill_));
  out.prefill_ms = ms;
  SPARSELLM_CHECK_CUDA(cudaEventElapsedTime(&ms, ev_prefill_, ev_end_));
  out.decode_ms = ms;
  out.graph_steps = graph_steps_;
  out.graph_error = graph_error_;
  out.sequences.resize(size_t(batch));
  for (int b = 0; b < batch; ++b) {
    const int32_t n = host<int32_t>(l.generated)[b];
    const int32_t* row = host<int32_t>(l.out_tokens_offset) + int64_t(b) * options_.max_seq_len;
    SequenceOutput& s = out.sequences[size_t(b)];
    s.tokens.assign(row, row + n);
    s.finish_reason = host<int32_t>(l.finish_reason)[b] == kDecodeEos ? FinishReason::kEos : FinishReason::kLength;
  }
  record_peak();
  return out;
}

std::vector<float> Generator::prompt_logits(const std::vector<std::vector<int32_t>>& prompts) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_request(prompts, 0);
  SPARSELLM_CHECK_CUDA(cudaSetDevice(device_));
  const size_t batch = prompts.size(), vocab = size_t(info_.vocab_size);
  std::vector<uint16_t> bits(batch * vocab);
  try {
    GenerationConfig config;
    config.max_new_tokens = 1;
    const int64_t total = stage_request(prompts, config);
    prefill(prompts, total);
    SPARSELLM_CHECK_CUDA(
        cudaMemcpyAsync(bits.data(), logits_.data(), bits.size() * 2, cudaMemcpyDeviceToHost, stream_));
    wait_stream("prompt_logits");
  } catch (...) {
    drain_stream();
    throw;
  }
  std::vector<float> logits(bits.size());
  const bool fp16 = model_->dtype() == DType::kFloat16;
  for (size_t i = 0; i < bits.size(); ++i)
    logits[i] = fp16 ? __half2float(__ushort_as_half(bits[i])) : __bfloat162float(__ushort_as_bfloat16(bits[i]));
  record_peak();
  return logits;
}

}  // namespace sparsellm
