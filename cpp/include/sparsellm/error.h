// Error types of sparsellm. Every failed CUDA, cuBLAS, NCCL or MPI call and
// every invalid argument becomes one of these exceptions; the library never
// exits the process. The Python bindings map each type to a Python exception.
#pragma once

#include <stdexcept>
#include <string>

// Exception types cross shared-library boundaries (thrown in libsparsellm,
// caught in the Python module or an embedding program): their type
// information must be exported, whatever visibility the includer compiles with.
#define SPARSELLM_EXCEPTION_API __attribute__((visibility("default")))

namespace sparsellm {

class SPARSELLM_EXCEPTION_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  ~Error() override;  // defined in the library: the type's one home
};

// Bad shape, dtype, pointer or parameter passed by the caller.
class SPARSELLM_EXCEPTION_API InvalidArgument : public Error { using Error::Error; };
// A weight file or encoded buffer that is truncated, corrupt or of another version.
class SPARSELLM_EXCEPTION_API FormatError : public Error { using Error::Error; };
// No CUDA GPU, or one this build cannot run on.
class SPARSELLM_EXCEPTION_API DeviceError : public Error { using Error::Error; };
// The GPU ran out of memory.
class SPARSELLM_EXCEPTION_API OutOfMemory : public Error { using Error::Error; };
// A CUDA runtime, cuBLAS, NCCL or MPI call failed.
class SPARSELLM_EXCEPTION_API CudaError : public Error { using Error::Error; };
class SPARSELLM_EXCEPTION_API CublasError : public Error { using Error::Error; };
class SPARSELLM_EXCEPTION_API NcclError : public Error { using Error::Error; };
class SPARSELLM_EXCEPTION_API MpiError : public Error { using Error::Error; };

}  // namespace sparsellm
