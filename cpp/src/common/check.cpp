#include "common/check.h"

#include <cstdlib>
#include <cstring>

namespace sparsellm {
Error::~Error() = default;
}  // namespace sparsellm

namespace sparsellm::detail {

namespace {
std::string where(const char* stmt, const char* file, int line) {
  return concat(" in `", stmt, "` at ", file, ":", line);
}
}  // namespace

void throw_cuda(cudaError_t status, const char* stmt, const char* file, int line) {
  cudaGetLastError();  // reset the last-error state so later calls are not blamed
  std::string msg = concat("CUDA error ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")",
                           where(stmt, file, line));
  switch (status) {
    case cudaErrorMemoryAllocation:
      throw OutOfMemory(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDevice:
      throw DeviceError(msg);
    default:
      throw CudaError(msg);
  }
}

void throw_cublas(cublasStatus_t status, const char* stmt, const char* file, int line) {
  std::string msg = concat("cuBLAS error ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ")",
                           where(stmt, file, line));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw CublasError(msg);
}

bool debug_sync_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SPARSELLM_DEBUG_SYNC");
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

bool switched_off(const char* variable) {
  const char* v = std::getenv(variable);
  return v != nullptr && std::strcmp(v, "0") == 0;
}

}  // namespace sparsellm::detail
