// Split 2:4 encoder: the group rule read back from the words, dense tiles,
// determinism across thread counts, and rejection of corrupt buffers. (The
// round trip against an independent decoder is tests/python/test_split24_format.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "encoder_checks.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"
#include "sparsellm/split24.h"

namespace sparsellm {
namespace {

using namespace split24;

// Slot s (0, 1) of group g (0–15) of tile row `row` of a split tile, and its index nibble.
uint16_t slot(const uint32_t* tile, int row, int g, int s) {
  const int i = row / 16, r = row % 16, j = g / 8, c = 2 * (g % 8) + s;
  for (int b = 0; b < 256; ++b)
    if (bitmap::bit_row(0, b) == r && bitmap::bit_col(0, b) == c)
      return reinterpret_cast<const uint16_t*>(tile + kSlotWord + 128 * (2 * i + j))[b];
  return 0xDEAD;
}
uint32_t nibble(const uint32_t* tile, int row, int g) {
  const int i = row / 16, r = row % 16, j = g / 8, p = (g % 8) / 4, q = g % 4;
  return tile[kIndexWord + 32 * i + 4 * (r % 8) + 2 * p + j] >> (16 * (r / 8) + 4 * q) & 0xF;
}

TEST(Split24Encoder, GroupsFollowTheSlotRule) {
  // Row 0: group 0 empty; group 1 one nonzero at column 1; group 2 one at column 3;
  // group 3 two (0, 2); group 4 three (0, 1, 3); group 5 four.
  std::vector<uint16_t> w(128 * 64, 0);
  auto set = [&](int c, uint16_t v) { w[c] = v; };
  set(4 + 1, 0x3C01);
  set(8 + 3, 0x3C02);
  set(12 + 0, 0x3C03), set(12 + 2, 0x3C04);
  set(16 + 0, 0x3C05), set(16 + 1, 0x3C06), set(16 + 3, 0x3C07);
  for (int e = 0; e < 4; ++e) set(20 + e, uint16_t(0x3C08 + e));
  const Split24Host enc = encode_split24(w.data(), 128, 64, DType::kFloat16, 1);
  ASSERT_EQ(enc.nnz, 11);
  EXPECT_EQ(enc.residual, 3);
  const uint32_t* t = enc.data.data();
  EXPECT_EQ(t[0], 3u);
  EXPECT_EQ(enc.data.size(), size_t(split_tile_words(3)));
  struct Want {
    int group;
    uint16_t slot0, slot1;
    uint32_t index0, index1;
  };
  for (const Want& want : {Want{0, 0, 0, 0, 1}, Want{1, 0x3C01, 0, 1, 3}, Want{2, 0, 0x3C02, 2, 3},
                           Want{3, 0x3C03, 0x3C04, 0, 2}, Want{4, 0x3C05, 0x3C06, 0, 1}, Want{5, 0x3C08, 0x3C09, 0, 1}}) {
    EXPECT_EQ(slot(t, 0, want.group, 0), want.slot0) << "group " << want.group;
    EXPECT_EQ(slot(t, 0, want.group, 1), want.slot1) << "group " << want.group;
    EXPECT_EQ(nibble(t, 0, want.group), want.index0 | want.index1 << 2) << "group " << want.group;
  }
  // Residual entries of row block 0, row-major: (0, 19), (0, 22), (0, 23).
  EXPECT_EQ(t[kResidualWord + 0], 0x3C07u | residual_position(0, 19) << 16);
  EXPECT_EQ(t[kResidualWord + 1], 0x3C0Au | residual_position(0, 22) << 16);
  EXPECT_EQ(t[kResidualWord + 2], 0x3C0Bu | residual_position(0, 23) << 16);
  const uint16_t* starts = reinterpret_cast<const uint16_t*>(t + kResidualStartWord);
  for (int i = 1; i < 8; ++i) EXPECT_EQ(starts[i], 3) << i;
  EXPECT_EQ(validate_split24(enc.tile_offsets.data(), t, int64_t(enc.data.size()), 128, 64), 11);
}

// A residual takes the slot it would have in a group whose indices are (2, 3):
// its byte in R's slot tile, laid out as P's slot blocks (lane l's register r
// of block j at byte 512 j + 16 l + 4 r, slot 1 in the high half).
TEST(Split24Encoder, ResidualPositionIsTheSlotOfIndicesTwoAndThree) {
  // Row 0, column 19: group 4 of block 0, slot 1 -> lane 0, register 2, high half.
  EXPECT_EQ(residual_position(0, 19), 0u + 4 * 2 + 2);
  // Row 15, column 34: group 0 of block 1, row g + 8 with g = 7, slot 0 -> lane 28, register 1.
  EXPECT_EQ(residual_position(15, 34), 512u + 16 * 28 + 4 * 1);
  std::vector<bool> seen(kResidualTileBytes, false);
  for (int r = 0; r < 16; ++r)
    for (int c = 2; c < kTileK; c += (c % 4 == 2 ? 1 : 3)) {
      const uint32_t pos = residual_position(r, c);
      ASSERT_LT(pos, uint32_t(kResidualTileBytes));
      EXPECT_EQ(pos % 2, 0u);
      EXPECT_FALSE(seen[pos]) << "row " << r << " column " << c;
      seen[pos] = true;
      EXPECT_EQ(residual_row(pos), r);
      EXPECT_EQ(residual_col(pos), c);
    }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), kResidualTileBytes / 2);  // every slot once
}

TEST(Split24Encoder, CountsNonzerosAndPicksTheSmallerTile) {
  for (auto [m, k, density] : {std::tuple<int64_t, int64_t, double>{300, 130, 0.37}, {64, 172, 0.5},
                               {129, 65, 0.9}, {1000, 70, 0.05}, {256, 192, 1.0}}) {
    auto w = random_sparse(m, k, density, uint32_t(m + k));
    const Split24Host enc = encode_split24(w.data(), m, k, DType::kFloat16, 3);
    EXPECT_EQ(enc.nnz, count_nonzeros(w));
    ASSERT_NO_FATAL_FAILURE(expect_16_byte_tiles(enc));
    EXPECT_EQ(validate_split24(enc.tile_offsets.data(), enc.data.data(), int64_t(enc.data.size()), m, k), enc.nnz);
    for (size_t t = 0; t + 1 < enc.tile_offsets.size(); ++t) {
      const uint32_t words = enc.tile_offsets[t + 1] - enc.tile_offsets[t];
      if (words == 0) continue;
      const uint32_t kind = enc.data[enc.tile_offsets[t]];
      if (kind == kDenseTile) {
        EXPECT_EQ(words, uint32_t(kDenseTileWords));
      } else {
        EXPECT_EQ(words, uint32_t(split_tile_words(kind)));
        EXPECT_LE(words, uint32_t(kDenseTileWords));
      }
    }
  }
  auto full = random_sparse(128, 64, 1.0, 3);
  const Split24Host dense = encode_split24(full.data(), 128, 64, DType::kFloat16, 1);
  EXPECT_EQ(dense.data.size(), size_t(kDenseTileWords));
  EXPECT_EQ(dense.data[0], kDenseTile);
  EXPECT_EQ(dense.residual, 0);
}

TEST(Split24Encoder, DeterministicWhateverTheThreadCount) {
  expect_same_on_1_and_4_threads(encode_split24, &Split24Host::data);
}

TEST(Split24Encoder, EmptyMatrixAndNegativeZero) {
  std::vector<uint16_t> zeros(1000 * 70, 0x8000);  // −0 is zero
  const Split24Host empty = encode_split24(zeros.data(), 1000, 70, DType::kBFloat16, 2);
  EXPECT_EQ(empty.nnz, 0);
  EXPECT_TRUE(empty.data.empty());
  zeros[5] = 0x3C00;
  const Split24Host one = encode_split24(zeros.data(), 1000, 70, DType::kBFloat16, 2);
  EXPECT_EQ(one.nnz, 1);
  EXPECT_EQ(one.data.size(), size_t(split_tile_words(0)));
  EXPECT_EQ(one.tile_offsets.back(), uint32_t(split_tile_words(0)));
}

TEST(Split24Encoder, ValidatorRejectsCorruptTiles) {
  const int64_t m = 200, k = 100;
  auto w = random_sparse(m, k, 0.6, 4);
  const Split24Host enc = encode_split24(w.data(), m, k, DType::kFloat16, 2);
  ASSERT_GT(enc.residual, 0);
  auto check = [&](std::vector<uint32_t> offsets, std::vector<uint32_t> data) {
    validate_split24(offsets.data(), data.data(), int64_t(data.size()), m, k);
  };
  EXPECT_NO_THROW(check(enc.tile_offsets, enc.data));
  auto corrupt = [&](auto change) {
    auto data = enc.data;
    change(data);
    EXPECT_THROW(check(enc.tile_offsets, data), FormatError);
  };
  corrupt([](std::vector<uint32_t>& d) { d[0] += 1; });                       // residual count
  corrupt([](std::vector<uint32_t>& d) { d[kResidualStartWord] += 1u << 16; });  // residual_start[1]
  corrupt([](std::vector<uint32_t>& d) { d[kIndexWord] |= 0xF; });               // an index pair (3, 3)
  corrupt([](std::vector<uint32_t>& d) { d[kResidualWord] &= 0xFFFF0000u; });    // a residual value zeroed
  corrupt([](std::vector<uint32_t>& d) { d[kResidualWord] ^= 1u << 16; });       // an odd residual position
  corrupt([](std::vector<uint32_t>& d) { d[6] = 1; });                           // a reserved header word
  {  // offsets that do not end at the data size
    auto offsets = enc.tile_offsets;
    offsets.back() += 4;
    EXPECT_THROW(check(offsets, enc.data), FormatError);
  }
  EXPECT_THROW(encode_split24(w.data(), 0, k, DType::kFloat16), InvalidArgument);
}

}  // namespace
}  // namespace sparsellm
