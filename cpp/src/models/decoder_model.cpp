// The architecture dispatch: the checkpoint's "architecture" field picks the
// model family's config parser and class; and what the families' models
// share (decoder_model.h).
#include "models/decoder_model.h"

#include <algorithm>

#include "comm/communicator.h"
#include "common/check.h"
#include "kernels/attention/attention.h"
#include "kernels/embedding/embedding.h"
#include "models/llama/llama_model.h"
#include "models/opt/opt_model.h"
#include "runtime/nvtx_range.h"
#include "sparsellm/error.h"
#include "sparsellm/gemm.h"

namespace sparsellm {

namespace {

// The sizes every family's config holds under the same names; cache_kv_heads
// is this rank's share of the key/value heads.
template <typename Config>
DecoderShape shape_of(const Config& c, const std::string& architecture, int32_t cache_kv_heads) {
  DecoderShape s;
  s.architecture = architecture;
  s.vocab_size = c.vocab_size;
  s.hidden_size = c.hidden_size;
  s.num_layers = c.num_layers;
  s.num_heads = c.num_heads;
  s.cache_kv_heads = cache_kv_heads;
  s.head_dim = c.head_dim;
  s.max_positions = c.max_positions;
  s.eos_token_id = c.eos_token_id;
  s.bos_token_id = c.bos_token_id;
  return s;
}

}  // namespace

DecoderShape decoder_shape(const Checkpoint& ckpt, const std::string& where) {
  const std::string architecture = ckpt.architecture();
  const int tp = ckpt.tp();
  if (architecture == "opt") {
    const OptConfig c = OptConfig::from_json(ckpt.model_config(), where);
    return shape_of(c, architecture, c.num_heads / tp);
  }
  if (architecture == "llama") {
    const LlamaConfig c = LlamaConfig::from_json(ckpt.model_config(), where);
    if (c.num_kv_heads % tp != 0 || c.num_heads % tp != 0)
      throw InvalidArgument(detail::concat(where, ": tp = ", tp, " does not divide num_key_value_heads ",
                                           c.num_kv_heads, " and num_attention_heads ", c.num_heads,
                                           ": each rank must hold whole key/value heads"));
    return shape_of(c, architecture, c.num_kv_heads / tp);
  }
  throw InvalidArgument(detail::concat(where, ": architecture '", architecture,
                                       "' is not supported by the runtime (supported: opt, llama)"));
}

std::unique_ptr<DecoderModel> load_decoder_model(const Checkpoint& ckpt, const std::string& where, int64_t max_tokens,
                                                 int64_t max_outputs, int32_t max_seq, cudaStream_t stream,
                                                 const Communicator* comm) {
  if (ckpt.architecture() == "opt")
    return std::make_unique<OptModel>(ckpt, OptConfig::from_json(ckpt.model_config(), where), max_tokens,
                                      max_outputs, max_seq, stream, comm);
  if (ckpt.architecture() == "llama")
    return std::make_unique<LlamaModel>(ckpt, LlamaConfig::from_json(ckpt.model_config(), where), max_tokens,
                                        max_outputs, max_seq, stream, comm);
  throw InvalidArgument(detail::concat(where, ": architecture '", ckpt.architecture(),
                                       "' is not supported by the runtime (supported: opt, llama)"));
}

size_t ForwardWorkspaces::allocate(int64_t max_tokens, int32_t heads, int32_t head_dim, int32_t max_seq,
                                   size_t spmm_bytes, cudaStream_t stream) {
  // The split over keys is not monotone in the token count: take the largest
  // workspace over every count a forward may see.
  attention_bytes = 0;
  for (int64_t t = 1; t <= max_tokens; ++t)
    attention_bytes = std::max(attention_bytes, attention_workspace_bytes(t, heads, head_dim, max_seq));
  attention = DeviceBuffer(std::max<size_t>(attention_bytes, 256), "attention workspace");
  size_t total = attention.bytes();
  if (spmm_bytes > 0) {
    spmm = DeviceBuffer(spmm_bytes, "SpMM workspace");
    spmm.zero(stream);  // the SpMM kernels return their counters to zero
    total += spmm.bytes();
  }
  gemm = DeviceBuffer(kDenseGemmWorkspaceBytes, "cuBLASLt workspace");
  total += gemm.bytes();
  linear.spmm = spmm.data();
  linear.spmm_bytes = spmm.bytes();
  linear.gemm = gemm.data();
  linear.gemm_bytes = gemm.bytes();
  return total;
}

const Communicator* check_model_args(const Checkpoint& ckpt, const Communicator* comm, int64_t max_tokens,
                                     int64_t max_outputs, const char* who) {
  SPARSELLM_CHECK_ARG(max_tokens >= 1 && max_outputs >= 1 && max_outputs <= max_tokens, who,
                      " model: need 1 <= max_outputs (", max_outputs, ") <= max_tokens (", max_tokens, ")");
  const int tp = ckpt.tp();
  if (tp <= 1) return nullptr;
  SPARSELLM_CHECK_ARG(comm != nullptr && comm->world() == tp && comm->rank() == ckpt.rank(), ckpt.rank_file(),
                      ": the checkpoint is split over tp = ", tp, " ranks and this is rank ", ckpt.rank(),
                      "; the model needs a communicator of ", tp, " ranks at that rank",
                      comm ? detail::concat(", got rank ", comm->rank(), " of ", comm->world()) : std::string());
  return comm;
}

void ActivationAllocator::operator()(DeviceBuffer& buf, int64_t rows, int64_t width, const char* what) {
  buf = DeviceBuffer(size_t(rows) * size_t(width) * dtype_size(dtype), std::string("activations: ") + what);
  bytes += buf.bytes();
}

void check_forward_batch(const ForwardBatch& b, const KvCache& cache, int64_t max_tokens, int64_t max_outputs,
                         int32_t max_positions, const char* who) {
  SPARSELLM_CHECK_ARG(b.tokens_count >= 1 && b.tokens_count <= max_tokens, who, " forward: ", b.tokens_count,
                      " tokens, the workspace holds 1 to ", max_tokens);
  SPARSELLM_CHECK_ARG(b.outputs >= 0 && b.outputs <= max_outputs, who, " forward: ", b.outputs,
                      " output rows, the workspace holds 0 to ", max_outputs);
  SPARSELLM_CHECK_ARG(b.max_positions >= 1 && b.max_positions <= cache.max_seq() && b.max_positions <= max_positions,
                      who, " forward: max_positions ", b.max_positions, " outside [1, ",
                      std::min(cache.max_seq(), max_positions), "]");
  SPARSELLM_CHECK_ARG(b.tokens && b.place.slot && b.place.position && (b.outputs == 0 || (b.out_rows && b.logits)),
                      who, " forward: a device pointer is null");
}

void gather_output_rows(const void* residual, const void* pending, const ForwardBatch& b, int64_t width,
                        void* out, DType dtype, cudaStream_t stream) {
  EmbeddingParams gather;
  gather.table = residual;
  gather.ids = b.out_rows;
  gather.out = out;
  gather.n = b.outputs;
  gather.width = width;
  gather.rows = b.tokens_count;
  gather.dtype = dtype;
  embedding(gather, stream);
  if (pending) {
    gather.table = pending;
    gather.accumulate = true;
    embedding(gather, stream);
  }
}

}  // namespace sparsellm
