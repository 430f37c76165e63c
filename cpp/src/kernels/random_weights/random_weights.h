// Random weights drawn on the GPU, for generated checkpoints (benchmarks of
// real model sizes without writing or reading their weights):
//
//   W[r, c] = keep(r, c) ? v(r, c) : 0
//   keep(r, c) = u(r, c) < density                    (an independent Bernoulli mask)
//   v(r, c)    = offset + std · z(r, c), |v| ≥ 2⁻¹⁴      (z standard normal; never rounds to 0)
//
// u and z come from one Philox4x32-10 draw per element, counter (index lo,
// index hi, tensor, 0) with index = r · cols + c and key = the seed, so an
// element's value does not depend on the format it is stored in: the dense and
// the bitmap forms of one (seed, tensor, shape, density) are the same matrix.
//
// The bitmap form (sparsellm/bitmap.h) is written in two passes: counts of each
// tile's nonzeros (their sizes follow from the counts alone; the caller turns
// them into tile offsets), then every tile at its offset.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

struct RandomWeightParams {
  int64_t rows = 0, cols = 0;  // a vector is one row
  uint64_t seed = 0;
  uint32_t tensor = 0;         // the tensor's identity (a hash of its name and rank)
  float std = 0.02f, offset = 0.0f;
  double density = 1.0;        // fraction of elements kept, in [0, 1]
  DType dtype = DType::kFloat16;
};

// out[rows, cols], dense.
void random_dense(void* out, const RandomWeightParams& p, cudaStream_t stream);

// tile_nnz[tiles_m · tiles_k]: the nonzeros of each 128 × 64 tile.
void random_bitmap_counts(uint32_t* tile_nnz, const RandomWeightParams& p, cudaStream_t stream);

// The tiles at tile_offsets[tiles + 1] (from the counts, bitmap::tile_words);
// `tiles` must hold tile_offsets[tiles] words, zero-filled (the padding).
void random_bitmap_tiles(uint32_t* tiles, const uint32_t* tile_offsets, const RandomWeightParams& p,
                         cudaStream_t stream);

}  // namespace sparsellm
