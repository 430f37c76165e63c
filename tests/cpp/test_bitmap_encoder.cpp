// Bitmap encoder: layout against a direct reading of the format, determinism
// across thread counts, empty and full tiles, and rejection of corrupt buffers.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "bitmap_reference.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

std::vector<uint16_t> random_sparse(int64_t m, int64_t k, double density, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint16_t> w(m * k);
  for (auto& v : w) v = u(rng) < density ? uint16_t(0x3C00 | (rng() & 0x03FF)) ^ (rng() & 0x8000) : 0;
  return w;
}

std::vector<uint16_t> canonical(std::vector<uint16_t> w) {
  for (auto& v : w)
    if ((v & 0x7FFF) == 0) v = 0;
  return w;
}

TEST(BitmapEncoder, RoundTripsAndCountsNonzeros) {
  for (auto [m, k, density] : {std::tuple<int64_t, int64_t, double>{300, 130, 0.37}, {64, 172, 0.5},
                               {129, 65, 0.9}, {1000, 70, 0.05}}) {
    auto w = random_sparse(m, k, density, uint32_t(m + k));
    int64_t expected = 0;
    for (auto v : w) expected += (v & 0x7FFF) != 0;
    const BitmapHost enc = encode_bitmap(w.data(), m, k, DType::kFloat16, 3);
    EXPECT_EQ(enc.nnz, expected);
    ASSERT_EQ(enc.tile_offsets.size(), size_t(enc.tiles_m() * enc.tiles_k() + 1));
    for (size_t t = 0; t + 1 < enc.tile_offsets.size(); ++t) EXPECT_EQ(enc.tile_offsets[t] % 4, 0u);
    EXPECT_NO_THROW(validate_bitmap(enc.tile_offsets.data(), enc.data.data(), enc.data.size(), m, k));
    EXPECT_EQ(decode_bitmap(enc), canonical(w)) << m << "x" << k;
  }
}

TEST(BitmapEncoder, DeterministicWhateverTheThreadCount) {
  auto w = random_sparse(700, 333, 0.5, 2);
  const BitmapHost a = encode_bitmap(w.data(), 700, 333, DType::kFloat16, 1);
  const BitmapHost b = encode_bitmap(w.data(), 700, 333, DType::kFloat16, 4);
  EXPECT_EQ(a.tile_offsets, b.tile_offsets);
  EXPECT_EQ(a.data, b.data);
}

TEST(BitmapEncoder, FullTileEmptyTilesAndNegativeZero) {
  auto dense = random_sparse(128, 64, 1.0, 3);
  const BitmapHost full = encode_bitmap(dense.data(), 128, 64, DType::kFloat16, 1);
  EXPECT_EQ(full.nnz, 128 * 64);
  EXPECT_EQ(full.data.size(), size_t(bitmap::kMaxTileWords));
  EXPECT_EQ(decode_bitmap(full), dense);
  std::vector<uint16_t> zeros(1000 * 70, 0x8000);  // −0 is zero
  const BitmapHost empty = encode_bitmap(zeros.data(), 1000, 70, DType::kBFloat16, 2);
  EXPECT_EQ(empty.nnz, 0);
  EXPECT_TRUE(empty.data.empty());
  zeros[5] = 0x3C00;
  const BitmapHost one = encode_bitmap(zeros.data(), 1000, 70, DType::kBFloat16, 2);
  EXPECT_EQ(one.nnz, 1);
  EXPECT_EQ(one.data.size(), 264u);  // header + one value, padded to 16 bytes
  EXPECT_EQ(one.tile_offsets[1], 264u);
  EXPECT_EQ(one.tile_offsets.back(), 264u);
}

TEST(BitmapEncoder, ValidatorRejectsCorruptTiles) {
  const int64_t m = 200, k = 100;
  auto w = random_sparse(m, k, 0.4, 4);
  const BitmapHost enc = encode_bitmap(w.data(), m, k, DType::kFloat16, 2);
  auto check = [&](std::vector<uint32_t> offsets, std::vector<uint32_t> data) {
    validate_bitmap(offsets.data(), data.data(), data.size(), m, k);
  };
  EXPECT_NO_THROW(check(enc.tile_offsets, enc.data));
  {  // a mask bit flipped: counts and row starts disagree
    auto data = enc.data;
    data[3] ^= 1u << 7;
    EXPECT_THROW(check(enc.tile_offsets, data), FormatError);
  }
  {  // a row start off by one
    auto data = enc.data;
    data[256 + 1] += 1u << 16;
    EXPECT_THROW(check(enc.tile_offsets, data), FormatError);
  }
  {  // a stored value zeroed
    auto data = enc.data;
    data[260] &= 0xFFFF0000u;
    EXPECT_THROW(check(enc.tile_offsets, data), FormatError);
  }
  {  // a mask bit in the rows past M (last tile row holds rows 128..199)
    auto data = enc.data;
    const uint32_t last = enc.tile_offsets[enc.tile_offsets.size() - 2];
    data[last + 32 * 7] |= 1u;  // row block 7 = rows 240.. of the matrix
    EXPECT_THROW(check(enc.tile_offsets, data), FormatError);
  }
  {  // offsets that do not end at the data size
    auto offsets = enc.tile_offsets;
    offsets.back() += 4;
    EXPECT_THROW(check(offsets, enc.data), FormatError);
  }
  EXPECT_THROW(encode_bitmap(w.data(), 0, k, DType::kFloat16), InvalidArgument);
}

}  // namespace
}  // namespace sparsellm
