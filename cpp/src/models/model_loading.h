// What every model family needs to load itself: typed reads of the Hugging
// Face model_config (FormatError naming `where` and the key), checked uploads
// of the checkpoint's tensors (FormatError naming the rank file and the
// tensor), and the sizes of the linears loaded.
#pragma once

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layers/linear.h"
#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"

namespace sparsellm {

// --- model_config ---
bool has_value(const nlohmann::json& c, const char* key);  // present and not null
int32_t positive_int(const nlohmann::json& c, const char* key, const std::string& where);
bool flag(const nlohmann::json& c, const char* key, bool fallback, const std::string& where);
float number(const nlohmann::json& c, const char* key, float fallback, const std::string& where);
// eos/bos ids: an integer, a list of integers (the first is used); `fallback`
// when absent, -1 when null or of another type.
int32_t token_id(const nlohmann::json& c, const char* key, int32_t fallback);

// --- checkpoint tensors ---
void expect_shape(const Checkpoint& ckpt, const std::string& name, const std::vector<int64_t>& shape);
// A dense vector of n elements, uploaded on `stream`.
DeviceBuffer upload_vector(const Checkpoint& ckpt, const std::string& name, int64_t n, cudaStream_t stream);
// `module`.weight as a [out, in] Linear, with `module`.bias when the model has
// one (`bias`). A row-parallel bias (`rank0_bias`) is stored on rank 0 only, so
// that the all-reduce adds it once; any other rank holding one, or a bias the
// model excludes, is a FormatError.
std::unique_ptr<Linear> load_linear(const Checkpoint& ckpt, const std::string& module, bool bias, bool rank0_bias,
                                    int64_t out, int64_t in, cudaStream_t stream);
// FormatError when the checkpoint holds `tensor`, one of layer num_layers: more
// decoder layers than the config's num_hidden_layers.
void expect_no_extra_layers(const Checkpoint& ckpt, const std::string& tensor, int32_t num_layers);

// --- sizes of what was loaded ---
// Bytes of the linears' weights and biases on the device.
size_t device_bytes(const std::vector<const Linear*>& linears);
// The largest SpMM workspace any of the linears needs for up to max_n rows.
size_t spmm_workspace_bytes(const std::vector<const Linear*>& linears, int64_t max_n);

}  // namespace sparsellm
