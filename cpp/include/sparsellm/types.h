// Element types and small value types shared by the public API.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparsellm {

// Element type of weights and activations. Accumulation is always fp32.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

inline constexpr std::size_t dtype_size(DType) { return 2; }
inline constexpr const char* dtype_name(DType t) {
  return t == DType::kFloat16 ? "float16" : "bfloat16";
}

}  // namespace sparsellm
