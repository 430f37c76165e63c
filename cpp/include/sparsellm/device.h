// The GPU the calling thread works on: its properties, checked once.
#pragma once

#include <string>

namespace sparsellm {

struct DeviceInfo {
  int id = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;   // compute capability
  int sm_count = 0;                 // streaming multiprocessors
  int max_smem_per_block = 0;       // bytes of shared memory a block may opt in to
  long long global_mem_bytes = 0;
  int l2_bytes = 0;                 // L2 cache
};

// Properties of the current device. Throws DeviceError when there is no usable
// CUDA GPU, or when its compute capability is below 8.0 (this build's floor).
const DeviceInfo& current_device();

// Number of visible CUDA GPUs; 0 (never an exception) when there is no driver or GPU.
int device_count() noexcept;

}  // namespace sparsellm
