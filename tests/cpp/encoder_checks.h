// What the encoder tests of both formats share: random sparse 16-bit matrices,
// the tile offsets every format promises, and encodings that do not depend on
// the thread count.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "sparsellm/types.h"

namespace sparsellm {

// W [m, k] row-major, each element nonzero with probability `density`: an fp16
// of magnitude in [1, 2) and random sign.
inline std::vector<uint16_t> random_sparse(int64_t m, int64_t k, double density, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint16_t> w(m * k);
  for (auto& v : w) v = u(rng) < density ? uint16_t(0x3C00 | (rng() & 0x03FF)) ^ (rng() & 0x8000) : 0;
  return w;
}

// Nonzeros of w (±0 count as zero).
inline int64_t count_nonzeros(const std::vector<uint16_t>& w) {
  int64_t n = 0;
  for (auto v : w) n += (v & 0x7FFF) != 0;
  return n;
}

// One offset per tile plus the end, every tile starting on a 16-byte boundary.
// Call through ASSERT_NO_FATAL_FAILURE: a wrong offset count is fatal.
template <typename Host>
void expect_16_byte_tiles(const Host& enc) {
  ASSERT_EQ(enc.tile_offsets.size(), size_t(enc.tiles_m() * enc.tiles_k() + 1));
  for (size_t t = 0; t + 1 < enc.tile_offsets.size(); ++t) EXPECT_EQ(enc.tile_offsets[t] % 4, 0u);
}

// One 700 × 333 matrix of density 0.5 encoded on 1 and on 4 threads: the same
// offsets and the same words (the Host member `words`).
template <typename Host>
void expect_same_on_1_and_4_threads(Host (*encode)(const uint16_t*, int64_t, int64_t, DType, int),
                                    std::vector<uint32_t> Host::*words) {
  auto w = random_sparse(700, 333, 0.5, 2);
  const Host a = encode(w.data(), 700, 333, DType::kFloat16, 1);
  const Host b = encode(w.data(), 700, 333, DType::kFloat16, 4);
  EXPECT_EQ(a.tile_offsets, b.tile_offsets);
  EXPECT_EQ(a.*words, b.*words);
}

}  // namespace sparsellm
