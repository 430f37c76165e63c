// DeviceBuffer: one cudaMalloc per buffer, at load time. A failed allocation
// throws OutOfMemory with what was being allocated, its size and the GPU's
// free / total memory, after clearing CUDA's last-error state so that the
// next unrelated check is not blamed for it.
#include "runtime/device_buffer.h"

#include <cstdio>
#include <utility>

#include "common/check.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

std::string mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", double(bytes) / (1 << 20));
  return text;
}

}  // namespace

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) {
  if (bytes == 0) return;  // nothing to hold: data() stays null
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error state
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
    throw OutOfMemory(detail::concat("out of GPU memory allocating ", bytes, " bytes (", mib(bytes), ") for ", what,
                                     ": ", mib(free_bytes), " free of ", mib(total_bytes)));
  }
  if (status != cudaSuccess) detail::throw_cuda(status, ("cudaMalloc for " + what).c_str(), __FILE__, __LINE__);
  data_ = p;
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);  // a destructor must not throw; a failure here has no one to report to
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(bytes <= bytes_, "DeviceBuffer::upload: ", bytes, " bytes into a buffer of ", bytes_);
  if (bytes == 0) return;
  SPARSELLM_CHECK_ARG(host != nullptr, "DeviceBuffer::upload: null host pointer");
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(data_, host, bytes, cudaMemcpyHostToDevice, stream));
}

void DeviceBuffer::zero(cudaStream_t stream) {
  if (bytes_ == 0) return;
  SPARSELLM_CHECK_CUDA(cudaMemsetAsync(data_, 0, bytes_, stream));
}

}  // namespace sparsellm
