// Sparse × dense matrix multiply on tensor cores ("load as sparse, compute as
// dense"):
//
//   Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias[M])
//
// W is encoded offline in Tiled-CSL (sparsellm/tiled_csl.h), bitmap
// (sparsellm/bitmap.h) or split 2:4 (sparsellm/split24.h) — the format is a
// property of the encoded weight, and all cut W into the same 128 × 64 tiles; X and Y are row-major and
// contiguous; fp16 or bf16 values, fp32 accumulation. Any N ≥ 1, M, K ≥ 1.
//
// Work split (stream-K). The weight's tiles, in storage order, form one byte
// stream. A plan cuts it into ranges of nearly equal cost (bytes plus a fixed
// cost per tile and per tile row), one per thread block (blocks beyond the
// tile count get none), computed once per weight and GPU from the host copy of
// the tile offsets. A tile row whose tiles fall to several blocks is summed
// through fp32 partials in the workspace, in block order, by whichever block
// finishes last: the result is deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sparsellm/types.h"

namespace sparsellm {

// One thread block's share of a stream-K plan. Units are tiles in storage
// order (unit u = tile row u / tiles_k, tile column u % tiles_k).
struct StreamKBlock {
  int32_t unit_begin = 0, unit_end = 0;  // [begin, end) units; empty when equal
  int32_t first_row_lead = 0;            // first block contributing to this block's first tile row
  int32_t first_row_parts = 1;           // how many blocks contribute to it
  int32_t last_row_lead = 0;             // the same for this block's last tile row
  int32_t last_row_parts = 1;
};

enum class SparseFormat : int { kTiledCsl = 0, kBitmap = 1, kSplit24 = 2 };

// The format's name in checkpoints and in Python: "tiled_csl", "bitmap" or "split24".
inline constexpr const char* sparse_format_name(SparseFormat f) {
  return f == SparseFormat::kBitmap ? "bitmap" : f == SparseFormat::kSplit24 ? "split24" : "tiled_csl";
}
inline constexpr SparseFormat kSparseFormats[] = {SparseFormat::kTiledCsl, SparseFormat::kBitmap,
                                                  SparseFormat::kSplit24};
// The format whose name is `name`; false when none is.
inline bool sparse_format_named(const std::string& name, SparseFormat* format) {
  for (SparseFormat f : kSparseFormats)
    if (name == sparse_format_name(f)) return *format = f, true;
  return false;
}

// Encoded weight as the kernel sees it: device pointers and shape. Both
// formats are a uint32 array of tiles and uint32 tile offsets in words.
struct SparseMatrixView {
  const uint32_t* words = nullptr;         // [tile_offsets[tiles]] Tiled-CSL words or bitmap tile data
  const uint32_t* tile_offsets = nullptr;  // [tiles_m · tiles_k + 1]
  int64_t m = 0, k = 0;
  DType dtype = DType::kFloat16;
  SparseFormat format = SparseFormat::kTiledCsl;
};

// RMSNorm folded into the products on either side of it, at up to
// kSpmmNormFoldMaxRows rows of X (a decode step's widths), so that no kernel
// of its own runs between them:
//
//   out (the product before the norm; Y is the residual stream h, updated in place):
//     h[n, m] += (X · Wᵀ)[n, m] (+ bias[m])         rounded to the storage type
//     normed[n, m] = h[n, m] · gamma[m]             (no 1 / rms: the next product applies it)
//     sumsq[r, n] = Σ over tile row r's m of h[n, m]²   ([ceil(m / 128), n] fp32)
//   in (the product after it, whose X [n, k] is that `normed`, so k is the out product's m):
//     Y[n, m] = s[n] · (X · Wᵀ)[n, m] (+ bias[m]),   s[n] = 1 / sqrt(Σ_r sumsq[r, n] / k + eps)
//
// s[n] factors out of row n of the product, so Y is the product of the
// RMSNorm's output. A product may take either part, or both with two sumsq
// arrays.
constexpr int64_t kSpmmNormFoldMaxRows = 16;
struct SpmmNormOut {
  const void* gamma = nullptr;  // [m] the norm's weight; null: no out part
  void* normed = nullptr;       // [n, m]
  float* sumsq = nullptr;       // [ceil(m / 128), n]
};
struct SpmmNormIn {
  const float* sumsq = nullptr;  // [ceil(k / 128), n] the out part's sumsq; null: no in part
  float eps = 0.0f;
};
struct SpmmNormFold {
  SpmmNormOut out;
  SpmmNormIn in;
};

struct SpmmParams {
  const void* x = nullptr;       // [n, k]
  const void* bias = nullptr;    // [m] or nullptr
  void* y = nullptr;             // [n, m]
  bool relu = false;             // y = max(x · Wᵀ + bias, 0): the activation where Y is stored
  int64_t n = 0;
  SparseMatrixView weight;
  const StreamKBlock* plan = nullptr;  // device copy of spmm_plan()'s result
  int plan_blocks = 0;
  void* workspace = nullptr;     // spmm_workspace_bytes(); zero-filled once before first use
  size_t workspace_bytes = 0;
  SpmmNormFold norm;             // none by default
};

// Thread blocks a plan should have on the current GPU.
int spmm_plan_blocks();

// Tiles of W[m, k] in either format (128 × 64 tiles): its tile offsets hold one more entry.
int64_t spmm_tile_count(int64_t m, int64_t k);

// The stream-K plan for a weight from its host tile offsets (either format).
std::vector<StreamKBlock> spmm_plan(const uint32_t* tile_offsets, int64_t m, int64_t k, int blocks);

// The plan whose block b takes units [begin[b], begin[b + 1]) (begin: blocks + 1
// non-decreasing values from 0 to the tile count; the non-empty blocks first), with
// each block's row owners filled in. spmm_plan's second half; tests give ranges
// of their own.
std::vector<StreamKBlock> spmm_plan_of_ranges(const std::vector<int32_t>& begin, int64_t m, int64_t k);

// Workspace bytes for a product with n rows of X under a plan of `blocks` blocks.
// The kernel leaves the workspace's first spmm_workspace_scratch_offset() bytes
// zero, as it found them, so one zero-filled workspace serves every later call
// on the same stream, under plans of any size.
size_t spmm_workspace_bytes(int64_t m, int64_t n, int blocks);

// Enqueues Y = X · Wᵀ (+ bias) on `stream`. Validates arguments (throws
// InvalidArgument) and the device; never synchronizes.
void spmm_tiled_csl(const SpmmParams& params, cudaStream_t stream);
// The same for a bitmap weight (params.weight.format == SparseFormat::kBitmap).
void spmm_bitmap(const SpmmParams& params, cudaStream_t stream);
// The same for a split 2:4 weight (params.weight.format == SparseFormat::kSplit24).
// It multiplies up to 64 columns of X per pass over W: wider inputs stream W
// again per 64 columns.
void spmm_split24(const SpmmParams& params, cudaStream_t stream);
// Beyond this many rows of X a split 2:4 weight multiplies faster expanded to
// dense (spmm_split24_to_dense, then a dense GEMM) than by spmm_split24's passes
// (docs/kernel-notes.md, "Split 2:4").
constexpr int64_t kSplit24SpmmMaxRows = 128;
// Writes a split 2:4 weight as the dense row-major [m, k] matrix (16-bit
// values) at `dense`, on `stream`, after every earlier kernel of the stream.
void spmm_split24_to_dense(const SparseMatrixView& weight, void* dense, cudaStream_t stream);
// The first byte of an SpMM workspace a caller may use as scratch of its own
// between SpMM calls (the counters and the partials' zone before it must stay
// zero, as the kernels leave them).
size_t spmm_workspace_scratch_offset();
// Dispatches on params.weight.format.
void spmm(const SpmmParams& params, cudaStream_t stream);

}  // namespace sparsellm
