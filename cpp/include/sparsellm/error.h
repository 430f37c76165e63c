// Error types of sparsellm. Every failed CUDA, cuBLAS, NCCL or MPI call and
// every invalid argument becomes one of these exceptions; the library never
// exits the process. The Python bindings map each type to a Python exception.
#pragma once

#include <stdexcept>
#include <string>

namespace sparsellm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad shape, dtype, pointer or parameter passed by the caller.
class InvalidArgument : public Error { using Error::Error; };
// A weight file or encoded buffer that is truncated, corrupt or of another version.
class FormatError : public Error { using Error::Error; };
// No CUDA GPU, or one this build cannot run on.
class DeviceError : public Error { using Error::Error; };
// The GPU ran out of memory.
class OutOfMemory : public Error { using Error::Error; };
// A CUDA runtime, cuBLAS, NCCL or MPI call failed.
class CudaError : public Error { using Error::Error; };
class CublasError : public Error { using Error::Error; };
class NcclError : public Error { using Error::Error; };
class MpiError : public Error { using Error::Error; };

}  // namespace sparsellm
