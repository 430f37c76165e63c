// Chained kernel launches: programmatic dependent launch on sm_90.
//
// launch_chained(name, kernel, grid, block, smem, stream, args...) launches with
// programmatic stream serialization where the GPU has it (compute capability
// ≥ 9.0; a plain launch before): the kernel's blocks may be scheduled as soon
// as every block of the previous kernel in the stream has called
// allow_dependent_launch() (kernels/device_math.cuh), before that kernel ends,
// which hides the gap between the small kernels of a decode step. Contract of
// a kernel launched this way: it calls wait_for_prerequisite_grids() before it
// reads or writes any memory an earlier kernel may touch (the transformer
// kernels first thing, the norm after reading its gamma and beta; the SpMM
// kernels once their weights are streaming: no kernel writes a weight once the
// model is loaded),
// and allow_dependent_launch() as early as it likes (every kernel here at its
// start, so up to three grids overlap: an SpMM ending, the small kernel after
// it waiting, and the next SpMM streaming weights). Errors become exceptions
// naming the kernel.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "common/check.h"
#include "sparsellm/device.h"

namespace sparsellm::kernels {

template <typename... Params, typename... Args>
void launch_chained(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                    cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute early;
  early.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &early;
  config.numAttrs = current_device().cc_major >= 9 ? 1 : 0;
  SPARSELLM_CHECK_CUDA(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
  SPARSELLM_CHECK_LAUNCH(name);
}

}  // namespace sparsellm::kernels
