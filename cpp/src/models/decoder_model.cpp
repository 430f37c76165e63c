// The architecture dispatch: the checkpoint's "architecture" field picks the
// model family's config parser and class (decoder_model.h).
#include "models/decoder_model.h"

#include "common/check.h"
#include "models/llama/llama_model.h"
#include "models/opt/opt_model.h"
#include "sparsellm/error.h"

namespace sparsellm {

DecoderShape decoder_shape(const Checkpoint& ckpt, const std::string& where) {
  DecoderShape s;
  s.architecture = ckpt.architecture();
  const int tp = ckpt.tp();
  if (s.architecture == "opt") {
    const OptConfig c = OptConfig::from_json(ckpt.model_config(), where);
    s.vocab_size = c.vocab_size;
    s.hidden_size = c.hidden_size;
    s.num_layers = c.num_layers;
    s.num_heads = c.num_heads;
    s.cache_kv_heads = c.num_heads / tp;
    s.head_dim = c.head_dim;
    s.max_positions = c.max_positions;
    s.eos_token_id = c.eos_token_id;
    s.bos_token_id = c.bos_token_id;
  } else if (s.architecture == "llama") {
    const LlamaConfig c = LlamaConfig::from_json(ckpt.model_config(), where);
    if (c.num_kv_heads % tp != 0 || c.num_heads % tp != 0)
      throw InvalidArgument(detail::concat(where, ": tp = ", tp, " does not divide num_key_value_heads ",
                                           c.num_kv_heads, " and num_attention_heads ", c.num_heads,
                                           ": each rank must hold whole key/value heads"));
    s.vocab_size = c.vocab_size;
    s.hidden_size = c.hidden_size;
    s.num_layers = c.num_layers;
    s.num_heads = c.num_heads;
    s.cache_kv_heads = c.num_kv_heads / tp;
    s.head_dim = c.head_dim;
    s.max_positions = c.max_positions;
    s.eos_token_id = c.eos_token_id;
    s.bos_token_id = c.bos_token_id;
  } else {
    throw InvalidArgument(detail::concat(where, ": architecture '", s.architecture,
                                         "' is not supported by the runtime (supported: opt, llama)"));
  }
  return s;
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

}  // namespace sparsellm
