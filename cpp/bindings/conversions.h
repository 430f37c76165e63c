// What every binding file of sparsellm._C converts at the Python boundary:
// integer addresses and streams to pointers, dtype and format names to enums, and host
// vectors to numpy arrays that own them (no copy).
#pragma once

#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sparsellm/error.h"
#include "sparsellm/spmm.h"
#include "sparsellm/types.h"

namespace sparsellm::bindings {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline DType to_dtype(const std::string& name) {
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  throw InvalidArgument("unsupported dtype '" + name + "': sparsellm computes in float16 or bfloat16");
}

inline SparseFormat to_format(const std::string& name) {
  SparseFormat f;
  if (sparse_format_named(name, &f)) return f;
  std::string known;
  for (SparseFormat g : kSparseFormats) known += std::string(known.empty() ? "'" : ", '") + sparse_format_name(g) + "'";
  throw InvalidArgument("unknown sparse format '" + name + "' (available: " + known + ")");
}

template <typename T>
pybind11::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owner = new std::vector<T>(std::move(values));
  pybind11::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return pybind11::array_t<T>({pybind11::ssize_t(owner->size())}, {pybind11::ssize_t(sizeof(T))}, owner->data(),
                              free_when_done);
}

}  // namespace sparsellm::bindings
