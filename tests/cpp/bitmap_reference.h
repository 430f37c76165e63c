// A reading of the bitmap format straight from its definition (docs/formats.md),
// independent of the encoder's and the kernels' loops; shared by the tests.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsellm/bitmap.h"

namespace sparsellm {

// Dense bits of a bitmap matrix: walk every lane's values in order.
inline std::vector<uint16_t> decode_bitmap(const BitmapHost& enc) {
  std::vector<uint16_t> out(enc.m * enc.k, 0);
  const int64_t tk = enc.tiles_k();
  for (int64_t t = 0; t + 1 < int64_t(enc.tile_offsets.size()); ++t) {
    if (enc.tile_offsets[t] == enc.tile_offsets[t + 1]) continue;
    const uint32_t* tile = enc.data.data() + enc.tile_offsets[t];
    const uint16_t* row_start = reinterpret_cast<const uint16_t*>(tile + 256);
    const uint16_t* values = reinterpret_cast<const uint16_t*>(tile + 260);
    for (int i = 0; i < 8; ++i) {
      int v = row_start[i];
      for (int j = 0; j < 4; ++j)
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < 8; ++e) {
            const int bit = 8 * lane + e;
            if (!(tile[32 * i + 4 * (bit / 32) + j] >> (bit % 32) & 1)) continue;
            const int reg = e / 2, half = e % 2;  // mma.m16n8k16 A fragment: a0..a3
            const int row = 16 * i + lane / 4 + (reg % 2) * 8;
            const int col = 16 * j + 2 * (lane % 4) + half + (reg / 2) * 8;
            out[((t / tk) * 128 + row) * enc.k + (t % tk) * 64 + col] = values[v++];
          }
    }
  }
  return out;
}

}  // namespace sparsellm
