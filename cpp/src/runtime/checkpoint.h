// Reading a sparsellm checkpoint directory (docs/checkpoint.md): config.json
// and one rank's safetensors file, memory-mapped (a generated checkpoint has
// config.json alone). Everything is validated on
// open — format version, architecture, dtype, tp and rank, the rank file's
// size and header, every component's dtype, shape and byte range, and the
// structure of encoded tensors — and every error names the file and tensor.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sparsellm/types.h"

namespace sparsellm {

// One stored array of the rank file: a view into the mapping.
struct ComponentView {
  std::string key;              // the safetensors key, e.g. "model.decoder.layers.0.fc1.weight.words"
  std::string dtype;            // "float16", "bfloat16" or "uint32"
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// One tensor's shard on this rank.
struct TensorEntry {
  std::string name;             // transformers name, e.g. "model.decoder.layers.0.fc1.weight"
  std::string format;           // "dense", "tiled_csl", ...
  std::vector<int64_t> shape;   // this rank's logical shape
  std::string split;            // "rows", "columns", "rank0", "replicated"
  bool pruned = false;          // a pruned decoder linear weight
  double sparsity = 0.0;        // of this shard (of a generated one: the target)
  int64_t nnz = 0;              // of this shard
  std::map<std::string, ComponentView> components;  // by key (none in a generated checkpoint)
  // The component `<name><suffix>` (suffix "" for dense, ".words", ...); throws FormatError.
  const ComponentView& component(const std::string& suffix) const;
};

// Whether a parsed config.json is that of a generated checkpoint (source.kind
// "generated": config.json alone, the weights drawn at load).
bool is_generated_checkpoint(const nlohmann::json& config);

class Checkpoint {
 public:
  // Opens `dir` for tensor-parallel rank `rank`. verify_sha256 also hashes the
  // rank file against config.json (slow for large models).
  static std::unique_ptr<Checkpoint> open(const std::string& dir, int rank, bool verify_sha256 = false);
  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::string& directory() const { return dir_; }
  const std::string& rank_file() const { return rank_file_; }
  const std::string& architecture() const { return architecture_; }  // "opt", "llama"
  const nlohmann::json& model_config() const { return config_.at("model_config"); }
  const nlohmann::json& config() const { return config_; }
  DType dtype() const { return dtype_; }
  int tp() const { return tp_; }
  int rank() const { return rank_; }
  // A generated checkpoint (source.kind "generated") is config.json alone: its
  // tensors have no components, and the loaders draw them on the GPU
  // (runtime/weights.h) from seed() with standard deviation weight_std().
  bool generated() const { return generated_; }
  uint64_t seed() const { return seed_; }
  float weight_std() const { return weight_std_; }

  // Tensors this rank holds, in storage order.
  const std::vector<std::string>& tensor_names() const { return names_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws FormatError naming the file when this rank holds no such tensor.
  const TensorEntry& tensor(const std::string& name) const;

 private:
  Checkpoint() = default;
  std::string dir_, rank_file_, architecture_;
  nlohmann::json config_;
  DType dtype_ = DType::kFloat16;
  int tp_ = 1, rank_ = 0;
  bool generated_ = false;
  uint64_t seed_ = 0;
  float weight_std_ = 0.0f;
  std::vector<std::string> names_;
  std::map<std::string, TensorEntry> tensors_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
};

}  // namespace sparsellm
