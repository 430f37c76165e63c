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
// model is loaded; the attention's relaxed read of a token's place before it,
// which only steers an L2 prefetch hint, is no use of that memory's value),
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

// The same in clusters of `cluster` consecutive blocks along x (thread-block
// clusters: compute capability ≥ 9.0, at most 8 blocks; grid.x a multiple of
// it), whose blocks may read and write each other's shared memory.
template <typename... Params, typename... Args>
void launch_chained_in_clusters(const char* name, unsigned cluster, void (*kernel)(Params...), dim3 grid, dim3 block,
                                size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  const bool hopper = current_device().cc_major >= 9;
  SPARSELLM_CHECK_ARG(cluster == 1 || (hopper && cluster <= 8 && grid.x % cluster == 0), name, ": clusters of ",
                      cluster, " blocks over ", grid.x, " need compute capability 9.0, at most 8 and a divisor");
  cudaLaunchAttribute attrs[2];
  unsigned count = 0;
  if (hopper) {
    attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attrs[count].id = cudaLaunchAttributeClusterDimension;
    attrs[count++].val.clusterDim = {cluster, 1, 1};
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = attrs;
  config.numAttrs = count;
  SPARSELLM_CHECK_CUDA(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
  SPARSELLM_CHECK_LAUNCH(name);
}

template <typename... Params, typename... Args>
void launch_chained(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                    cudaStream_t stream, Args&&... args) {
  launch_chained_in_clusters(name, 1, kernel, grid, block, smem_bytes, stream, std::forward<Args>(args)...);
}

}  // namespace sparsellm::kernels
