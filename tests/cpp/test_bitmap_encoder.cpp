// Bitmap encoder: layout against a direct reading of the format, determinism
// across thread counts, empty and full tiles, and rejection of corrupt buffers.
#include <gtest/gtest.h>

#include <vector>

#include "bitmap_reference.h"
#include "encoder_checks.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

std::vector<uint16_t> canonical(std::vector<uint16_t> w) {
  for (auto& v : w)
    if ((v & 0x7FFF) == 0) v = 0;
  return w;
}

TEST(BitmapEncoder, RoundTripsAndCountsNonzeros) {
  for (auto [m, k, density] : {std::tuple<int64_t, int64_t, double>{300, 130, 0.37}, {64, 172, 0.5},
                               {129, 65, 0.9}, {1000, 70, 0.05}}) {
    auto w = random_sparse(m, k, density, uint32_t(m + k));
    const BitmapHost enc = encode_bitmap(w.data(), m, k, DType::kFloat16, 3);
    EXPECT_EQ(enc.nnz, count_nonzeros(w));
    ASSERT_NO_FATAL_FAILURE(expect_16_byte_tiles(enc));
    EXPECT_NO_THROW(validate_bitmap(enc.tile_offsets.data(), enc.data.data(), enc.data.size(), m, k));
    EXPECT_EQ(decode_bitmap(enc), canonical(w)) << m << "x" << k;
  }
}

TEST(BitmapEncoder, DeterministicWhateverTheThreadCount) {
  expect_same_on_1_and_4_threads(encode_bitmap, &BitmapHost::data);
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
