// Status checks: each turns a failed call into the typed exception of
// sparsellm/error.h, naming the statement, file and line.
//
// SPARSELLM_DEBUG_SYNC=1 in the environment makes SPARSELLM_CHECK_LAUNCH
// synchronize the device after every kernel launch, so that an asynchronous
// fault is reported at the launch that caused it.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "sparsellm/error.h"

namespace sparsellm::detail {

[[noreturn]] void throw_cuda(cudaError_t status, const char* stmt, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t status, const char* stmt, const char* file, int line);
bool debug_sync_enabled();
// Whether the environment sets `variable` to "0": the switch that turns a path
// off for measurements of it against the one it replaced.
bool switched_off(const char* variable);

// Message building without iostreams (no locale machinery on the error path).
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, const char* s) { out += s; }
inline void append(std::string& out, char c) { out += c; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void append(std::string& out, T v) {
  out += std::to_string(v);
}

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string out;
  (append(out, parts), ...);
  return out;
}

}  // namespace sparsellm::detail

// Evaluates `stmt` once; any status other than `success` goes to
// `thrower(status, statement text, file, line)`, which throws.
#define SPARSELLM_CHECK_STATUS(stmt, success, thrower)                           \
  do {                                                                           \
    const auto sparsellm_status_ = (stmt);                                       \
    if (sparsellm_status_ != (success))                                          \
      thrower(sparsellm_status_, #stmt, __FILE__, __LINE__);                     \
  } while (0)

#define SPARSELLM_CHECK_CUDA(stmt) SPARSELLM_CHECK_STATUS(stmt, cudaSuccess, ::sparsellm::detail::throw_cuda)
#define SPARSELLM_CHECK_CUBLAS(stmt) \
  SPARSELLM_CHECK_STATUS(stmt, CUBLAS_STATUS_SUCCESS, ::sparsellm::detail::throw_cublas)

// After a kernel launch: the launch error, and with SPARSELLM_DEBUG_SYNC=1 the
// execution error too.
#define SPARSELLM_CHECK_LAUNCH(kernel_name)                                      \
  do {                                                                           \
    SPARSELLM_CHECK_CUDA(cudaGetLastError());                                    \
    if (::sparsellm::detail::debug_sync_enabled())                               \
      SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());                             \
  } while (0)

// Argument validation at the API boundary.
#define SPARSELLM_CHECK_ARG(cond, ...)                                           \
  do {                                                                           \
    if (!(cond))                                                                 \
      throw ::sparsellm::InvalidArgument(::sparsellm::detail::concat(__VA_ARGS__)); \
  } while (0)
