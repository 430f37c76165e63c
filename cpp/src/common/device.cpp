#include "sparsellm/device.h"

#include <mutex>
#include <vector>

#include "common/check.h"

namespace sparsellm {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

const DeviceInfo& current_device() {
  static std::mutex mutex;
  static std::vector<DeviceInfo> cache;
  static std::vector<bool> known;

  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw DeviceError(detail::concat("sparsellm needs an NVIDIA GPU (compute capability 8.0 or newer), "
                                     "but CUDA reports none: ",
                                     status == cudaSuccess ? "0 devices" : cudaGetErrorString(status)));
  }
  int id = 0;
  SPARSELLM_CHECK_CUDA(cudaGetDevice(&id));

  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() < static_cast<size_t>(count)) {
    cache.resize(count);
    known.resize(count, false);
  }
  if (!known[id]) {
    cudaDeviceProp prop{};
    SPARSELLM_CHECK_CUDA(cudaGetDeviceProperties(&prop, id));
    DeviceInfo& info = cache[id];
    info.id = id;
    info.name = prop.name;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.sm_count = prop.multiProcessorCount;
    info.max_smem_per_block = static_cast<int>(prop.sharedMemPerBlockOptin);
    info.global_mem_bytes = static_cast<long long>(prop.totalGlobalMem);
    info.l2_bytes = prop.l2CacheSize;
    if (prop.major < 8) {
      throw DeviceError(detail::concat("GPU ", id, " (", prop.name, ") has compute capability ", prop.major, ".",
                                       prop.minor, "; sparsellm needs 8.0 or newer (A100, H100, ...)"));
    }
    known[id] = true;
  }
  return cache[id];
}

}  // namespace sparsellm
