// X of an SpMM call as a TMA tensor (sm_90): the producer warps bring each
// X tile [BN rows, 64 columns] with one cp.async.bulk.tensor instead of
// BN · 8 / 32 16-byte cp.async pieces per lane.
//
//   tensor  X[n, k] (fp16 or bf16, row stride k elements; k % 8 == 0 and x
//           16-byte aligned, as TMA requires of a global tensor)
//   box     [rows, 64] = rows × 128 bytes, 128-byte swizzle: chunk j of
//           box row r lands at r · 128 + ((j ^ (r & 7)) << 4) from a
//           1024-byte aligned stage, the layout the cp.async path writes
//   outside rows n.. and columns k.. the box is filled with zeros.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm::stream_k {

// `bytes` rounded up to an X stage's 1024-byte alignment (the swizzle above is
// taken from address bits): where an X stage may follow that many bytes of a
// stage (a format's largest tile) or of a ring.
constexpr int x_aligned(int bytes) { return (bytes + 1023) / 1024 * 1024; }

// The tensor map of x; throws CudaError naming what failed (the driver's
// entry point, or the encoding with its arguments).
CUtensorMap x_tile_map(const void* x, int64_t n, int64_t k, DType dtype, int rows);

}  // namespace sparsellm::stream_k
