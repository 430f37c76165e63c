// Tiled-CSL encoder: invariants, determinism across thread counts, the
// bank-aware word order, and rejection of corrupt buffers.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "encoder_checks.h"
#include "sparsellm/error.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

TEST(TiledCslEncoder, CountsNonzerosAndPadsTilesTo16Bytes) {
  const int64_t m = 300, k = 130;
  auto w = random_sparse(m, k, 0.37, 1);
  const TiledCslHost enc = encode_tiled_csl(w.data(), m, k, DType::kFloat16, 3);
  EXPECT_EQ(enc.nnz, count_nonzeros(w));
  ASSERT_NO_FATAL_FAILURE(expect_16_byte_tiles(enc));
  EXPECT_NO_THROW(validate_tiled_csl(enc.tile_offsets.data(), enc.words.data(), enc.words.size(), m, k));
}

TEST(TiledCslEncoder, NegativeZeroIsZero) {
  std::vector<uint16_t> w(128 * 64, 0x8000);
  w[5] = 0x3C00;
  const TiledCslHost enc = encode_tiled_csl(w.data(), 128, 64, DType::kBFloat16, 1);
  EXPECT_EQ(enc.nnz, 1);
  EXPECT_EQ(enc.words.size(), 4u);  // one nonzero padded to a 16-byte vector
}

TEST(TiledCslEncoder, DeterministicWhateverTheThreadCount) {
  expect_same_on_1_and_4_threads(encode_tiled_csl, &TiledCslHost::words);
}

TEST(TiledCslEncoder, FullTileAndEmptyMatrix) {
  auto dense = random_sparse(128, 64, 1.0, 3);
  const TiledCslHost full = encode_tiled_csl(dense.data(), 128, 64, DType::kFloat16, 1);
  EXPECT_EQ(full.nnz, 128 * 64);
  EXPECT_EQ(full.words.size(), size_t(128 * 64));
  std::vector<uint16_t> zeros(1000 * 70, 0);
  const TiledCslHost empty = encode_tiled_csl(zeros.data(), 1000, 70, DType::kFloat16, 2);
  EXPECT_EQ(empty.nnz, 0);
  EXPECT_TRUE(empty.words.empty());
}

// Each warp store instruction covers the words {128 g + 4 l + j : l < 32} of a
// tile (a run); it takes as many shared-memory wavefronts as the most repeated
// bank among them. No order can beat max(runs, largest bank population) per
// tile; the encoder must come within 10% of that bound (a row-major order
// costs about 3.5 wavefronts per run).
TEST(TiledCslEncoder, StoresNearTheBankConflictBound) {
  for (double density : {0.5, 0.2}) {
    auto w = random_sparse(1024, 1024, density, 4);
    const TiledCslHost enc = encode_tiled_csl(w.data(), 1024, 1024, DType::kFloat16, 2);
    int64_t wavefronts = 0, bound = 0;
    for (size_t t = 0; t + 1 < enc.tile_offsets.size(); ++t) {
      const uint32_t b = enc.tile_offsets[t], e = enc.tile_offsets[t + 1];
      int population[32] = {};
      int64_t runs = 0;
      for (uint32_t g = b; g < e; g += 128)
        for (int j = 0; j < 4; ++j) {
          int count[32] = {}, worst = 0;
          for (uint32_t i = g + j; i < std::min(e, g + 128); i += 4) {
            const uint32_t off = enc.words[i] >> 16;
            if (off < uint32_t(tiled_csl::kPadBase)) ++population[(off >> 2) & 31];
            worst = std::max(worst, ++count[(off >> 2) & 31]);
          }
          wavefronts += worst;
          runs += worst > 0;
        }
      bound += std::max<int64_t>(runs, *std::max_element(population, population + 32));
    }
    EXPECT_LE(double(wavefronts), 1.1 * double(bound)) << "density " << density;
  }
}

TEST(TiledCslEncoder, ValidatorRejectsCorruptBuffers) {
  auto w = random_sparse(256, 128, 0.3, 5);
  TiledCslHost enc = encode_tiled_csl(w.data(), 256, 128, DType::kFloat16, 1);
  auto bad_offsets = enc.tile_offsets;
  bad_offsets[1] += 1;  // not 16-byte aligned
  EXPECT_THROW(validate_tiled_csl(bad_offsets.data(), enc.words.data(), enc.words.size(), 256, 128), FormatError);
  auto bad_words = enc.words;
  bad_words[0] = (uint32_t(0x3FFF) << 16) | 1;  // position past the tile, nonzero value
  EXPECT_THROW(validate_tiled_csl(enc.tile_offsets.data(), bad_words.data(), bad_words.size(), 256, 128),
               FormatError);
  EXPECT_THROW(validate_tiled_csl(enc.tile_offsets.data(), enc.words.data(), enc.words.size() - 4, 256, 128),
               FormatError);
  EXPECT_THROW(encode_tiled_csl(w.data(), 0, 128, DType::kFloat16), InvalidArgument);
}

}  // namespace
}  // namespace sparsellm
