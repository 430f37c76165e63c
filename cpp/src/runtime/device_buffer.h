// Owning device memory: allocated once at load time, freed on destruction.
// Allocation failure throws OutOfMemory naming what was being allocated and
// how much memory the GPU had left.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace sparsellm {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const std::string& what);  // uninitialised
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }

  // Copies `bytes` host bytes to the start of the buffer on `stream`. From
  // pageable memory (a std::vector) the call returns once the source is staged,
  // so the caller may free it at once; pinned memory must outlive the copy.
  void upload(const void* host, size_t bytes, cudaStream_t stream);
  void zero(cudaStream_t stream);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace sparsellm
