// Putting a checkpoint's tensors on the device (load time only).
//
// Stored tensors are copied with cudaMemcpyAsync on `stream` straight from
// the checkpoint's read-only mapping (pageable memory: each call returns once
// its source has been staged, so the Checkpoint may be closed afterwards).
// A generated checkpoint's tensors are drawn on `stream` instead
// (kernels/random_weights: normal(0, std), norm weights 1 + normal(0, std),
// pruned weights thinned by a Bernoulli mask of the entry's target density),
// seeded per tensor by (seed, name, rank). The caller synchronizes `stream`
// once after loading everything.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/random_weights/random_weights.h"
#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"

namespace sparsellm {

// The dense tensor `name` of this rank ([rows, cols] or [n], the checkpoint's
// dtype) in a new device buffer. Throws FormatError naming the file and tensor
// when the rank holds no such tensor, or holds it in another format or dtype.
DeviceBuffer upload_dense(const Checkpoint& checkpoint, const std::string& name, cudaStream_t stream);

// A tiled sparse tensor (Tiled-CSL, bitmap or split 2:4) of this rank on the device, with
// its tile offsets also on the host (the stream-K plan is made from them).
struct SparseUpload {
  DeviceBuffer data;                   // the words / tiles (empty for an all-zero matrix)
  DeviceBuffer tile_offsets;           // [tiles + 1]
  std::vector<uint32_t> host_offsets;  // the same, on the host
};
SparseUpload upload_sparse(const Checkpoint& checkpoint, const std::string& name, cudaStream_t stream);

// A random bitmap matrix drawn on `stream` (kernels/random_weights.h); waits
// for the tile counts, from which the host makes the offsets.
SparseUpload draw_bitmap(const RandomWeightParams& params, const std::string& name, cudaStream_t stream);

// The same random matrix in Tiled-CSL: drawn dense on `stream`, copied to the
// host and encoded there (encode_tiled_csl, every hardware thread), then
// uploaded; waits for each step.
SparseUpload draw_tiled_csl(const RandomWeightParams& params, const std::string& name, cudaStream_t stream);
// The same in split 2:4 (encode_split24).
SparseUpload draw_split24(const RandomWeightParams& params, const std::string& name, cudaStream_t stream);

}  // namespace sparsellm
