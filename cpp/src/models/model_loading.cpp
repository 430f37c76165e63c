#include "models/model_loading.h"

#include <algorithm>

#include "common/check.h"
#include "runtime/weights.h"
#include "sparsellm/error.h"

namespace sparsellm {

using nlohmann::json;

bool has_value(const json& c, const char* key) { return c.contains(key) && !c.at(key).is_null(); }

int32_t positive_int(const json& c, const char* key, const std::string& where) {
  if (!c.contains(key) || !c.at(key).is_number_integer())
    throw FormatError(detail::concat(where, ": model_config.", key, " must be an integer"));
  const int64_t v = c.at(key).get<int64_t>();
  if (v <= 0 || v > INT32_MAX)
    throw FormatError(detail::concat(where, ": model_config.", key, " must be positive, got ", v));
  return int32_t(v);
}

bool flag(const json& c, const char* key, bool fallback, const std::string& where) {
  if (!has_value(c, key)) return fallback;
  if (!c.at(key).is_boolean())
    throw FormatError(detail::concat(where, ": model_config.", key, " must be true or false"));
  return c.at(key).get<bool>();
}

float number(const json& c, const char* key, float fallback, const std::string& where) {
  if (!has_value(c, key)) return fallback;
  if (!c.at(key).is_number()) throw FormatError(detail::concat(where, ": model_config.", key, " must be a number"));
  return c.at(key).get<float>();
}

int32_t token_id(const json& c, const char* key, int32_t fallback) {
  if (!c.contains(key)) return fallback;
  const json& v = c.at(key);
  if (v.is_number_integer()) return int32_t(v.get<int64_t>());
  if (v.is_array() && !v.empty() && v.at(0).is_number_integer()) return int32_t(v.at(0).get<int64_t>());
  return -1;
}

void expect_shape(const Checkpoint& ckpt, const std::string& name, const std::vector<int64_t>& shape) {
  const TensorEntry& t = ckpt.tensor(name);  // FormatError naming the file when absent
  if (t.shape != shape) {
    std::string got, want;
    for (int64_t d : t.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
    throw FormatError(detail::concat(ckpt.rank_file(), ": tensor ", name, " has shape [", got,
                                     "], the model config implies [", want, "]"));
  }
}

DeviceBuffer upload_vector(const Checkpoint& ckpt, const std::string& name, int64_t n, cudaStream_t stream) {
  expect_shape(ckpt, name, {n});
  return upload_dense(ckpt, name, stream);
}

std::unique_ptr<Linear> load_linear(const Checkpoint& ckpt, const std::string& module, bool bias, bool rank0_bias,
                                    int64_t out, int64_t in, cudaStream_t stream) {
  const std::string weight = module + ".weight", bias_name = module + ".bias";
  const bool load_bias = bias && (!rank0_bias || ckpt.rank() == 0);
  if (!load_bias && ckpt.has(bias_name))
    throw FormatError(detail::concat(ckpt.rank_file(), ": holds ", bias_name,
                                     bias ? "; with tensor parallelism only rank 0 may (it would be added twice)"
                                          : ", which the model config excludes"));
  auto lin = std::make_unique<Linear>(ckpt, weight, load_bias ? bias_name : std::string(), stream);
  if (lin->out_features() != out || lin->in_features() != in)
    throw FormatError(detail::concat(ckpt.rank_file(), ": tensor ", weight, " has shape [", lin->out_features(), ", ",
                                     lin->in_features(), "], the model config implies [", out, ", ", in, "]"));
  return lin;
}

void expect_no_extra_layers(const Checkpoint& ckpt, const std::string& tensor, int32_t num_layers) {
  if (ckpt.has(tensor))
    throw FormatError(detail::concat(ckpt.rank_file(), ": holds more decoder layers than num_hidden_layers = ",
                                     num_layers));
}

size_t device_bytes(const std::vector<const Linear*>& linears) {
  size_t bytes = 0;
  for (const Linear* l : linears) bytes += l->device_bytes();
  return bytes;
}

size_t spmm_workspace_bytes(const std::vector<const Linear*>& linears, int64_t max_n) {
  size_t bytes = 0;
  for (const Linear* l : linears) bytes = std::max(bytes, l->spmm_workspace_bytes(max_n));
  return bytes;
}

}  // namespace sparsellm
