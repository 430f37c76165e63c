// Row gather from a table, optionally added to what is already in the output:
//
//   out[i, :] = (accumulate ? out[i, :] : 0) + table[ids[i] + offset, :]     i < n
//
// One op serves the token embedding (ids = token ids), OPT's learned position
// embedding (ids = positions, offset 2, accumulate) and the gather of each
// sequence's last hidden row before the LM head (table = hidden states).
// The caller guarantees 0 ≤ ids[i] + offset < rows (token ids are checked on
// the host before upload; sampled ids are < vocab by construction).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

struct EmbeddingParams {
  const void* table = nullptr;    // [rows, width]
  const int32_t* ids = nullptr;   // [n] device
  void* out = nullptr;            // [n, width]; out_stride elements between rows
  int64_t n = 0, width = 0, rows = 0;
  int64_t table_stride = 0;       // elements between table rows (0: width)
  int64_t out_stride = 0;         // elements between output rows (0: width)
  int32_t offset = 0;
  bool accumulate = false;
  DType dtype = DType::kFloat16;
};

void embedding(const EmbeddingParams& params, cudaStream_t stream);

}  // namespace sparsellm
