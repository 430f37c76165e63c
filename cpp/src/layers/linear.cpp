// Linear layer: y[n, out] = x[n, in] · W[out, in]ᵀ (+ b[out]).
//
// Load time (constructor): the checkpoint entry decides the path.
//   dense      W [out, in] uploaded (or drawn) as is       → dense_gemm (cuBLASLt)
//   tiled_csl  tile_offsets [tiles + 1] and the data array
//   bitmap     (words / tiles) uploaded (or drawn,
//   split24
//              runtime/weights.h); the stream-K plan
//              computed on the host from the offsets
//              for this GPU's block count and uploaded     → spmm (dispatches on
//                                                             the format); split24
//                                                             for more than
//                                                             kSplit24SpmmMaxRows
//                                                             rows: expanded to
//                                                             dense in the SpMM
//                                                             workspace → dense_gemm
// The bias, when named, is a dense [out] vector applied in the GEMM / SpMM
// epilogue. Shapes and formats are checked before anything touches the GPU,
// so a wrong name or shape is a FormatError naming the tensor, never a
// half-loaded layer. Uploads are asynchronous on the given stream.
//
// stack() joins layers that read the same input (q/k/v, gate/up) into one by
// rows: dense weights and biases are concatenated on the device; sparse ones
// too, their tile offsets (read back from the device: a layer keeps no host
// copy) shifted (the tile grid is numbered row-major, so a part of whole tile
// rows ends where the next begins) and the plan recomputed.
//
// forward() enqueues one GEMM or SpMM (or an expansion and a GEMM) on the
// caller's stream: no allocation, no synchronization.
#include "layers/linear.h"

#include <algorithm>
#include <map>

#include "common/check.h"
#include "runtime/weights.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/split24.h"
#include "sparsellm/error.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

using detail::concat;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

Linear::Linear(const Checkpoint& checkpoint, const std::string& weight_name, const std::string& bias_name,
               cudaStream_t stream) {
  const std::string& file = checkpoint.rank_file();
  // Everything is validated before the first allocation.
  const TensorEntry& w = checkpoint.tensor(weight_name);
  if (w.shape.size() != 2 || w.shape[0] <= 0 || w.shape[1] <= 0)
    throw FormatError(concat(file, ": tensor ", weight_name, " has shape ", shape_str(w.shape),
                             ": a linear weight must be a non-empty [out, in] matrix"));
  SparseFormat sparse_format = SparseFormat::kTiledCsl;
  if (w.format != "dense" && !sparse_format_named(w.format, &sparse_format))
    throw FormatError(concat(file, ": tensor ", weight_name, ": format ", w.format, " has no linear layer"));
  name_ = weight_name;
  out_ = w.shape[0];
  in_ = w.shape[1];
  dtype_ = checkpoint.dtype();
  const TensorEntry* bias = nullptr;
  if (!bias_name.empty()) {
    bias = &checkpoint.tensor(bias_name);
    if (bias->format != "dense" || bias->shape != std::vector<int64_t>{out_})
      throw FormatError(concat(file, ": bias ", bias_name, " (", bias->format, ", shape ", shape_str(bias->shape),
                               ") does not fit weight ", weight_name, " of shape ", shape_str(w.shape),
                               ": expected a dense [", out_, "] vector"));
  }

  if (w.format == "dense") {
    buffers_.push_back(upload_dense(checkpoint, weight_name, stream));
    weight_ptr_ = buffers_.back().data();
  } else {  // every sparse format: the same tile grid, offsets and plan
    SparseUpload weight = upload_sparse(checkpoint, weight_name, stream);
    set_sparse(std::move(weight.data), std::move(weight.tile_offsets), weight.host_offsets, sparse_format, stream);
  }
  if (bias) {
    buffers_.push_back(upload_dense(checkpoint, bias_name, stream));
    bias_ = buffers_.back().data();
  }
}

void Linear::set_sparse(DeviceBuffer data, DeviceBuffer tile_offsets, const std::vector<uint32_t>& host_offsets,
                        SparseFormat format, cudaStream_t stream) {
  const std::vector<StreamKBlock> plan = spmm_plan(host_offsets.data(), out_, in_, spmm_plan_blocks());
  plan_blocks_ = int(plan.size());
  SparseMatrixView view;
  view.words = data.as<const uint32_t>();  // null for an all-zero weight
  view.tile_offsets = tile_offsets.as<const uint32_t>();
  view.m = out_;
  view.k = in_;
  view.dtype = dtype_;
  view.format = format;
  sparse_ = view;
  buffers_.push_back(std::move(data));
  buffers_.push_back(std::move(tile_offsets));
  // `plan` dies with this scope; that is safe: a copy from pageable memory
  // returns only once its source has been staged.
  DeviceBuffer plan_buffer(plan.size() * sizeof(StreamKBlock), name_ + " stream-K plan");
  plan_buffer.upload(plan.data(), plan_buffer.bytes(), stream);
  plan_ = plan_buffer.data();
  buffers_.push_back(std::move(plan_buffer));
}

Linear Linear::dense_view(const void* weight, int64_t out_features, int64_t in_features, DType dtype) {
  SPARSELLM_CHECK_ARG(weight != nullptr, "Linear::dense_view: null weight");
  SPARSELLM_CHECK_ARG(out_features > 0 && in_features > 0, "Linear::dense_view: invalid shape [", out_features, ", ",
                      in_features, "]");
  Linear linear;
  linear.name_ = "(dense view)";
  linear.out_ = out_features;
  linear.in_ = in_features;
  linear.dtype_ = dtype;
  linear.weight_ptr_ = weight;
  return linear;
}

std::unique_ptr<Linear> Linear::stack(const std::vector<const Linear*>& parts, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(!parts.empty(), "Linear::stack: no parts");
  const Linear& first = *parts.front();
  for (const Linear* p : parts) {
    const bool same = p->in_ == first.in_ && p->dtype_ == first.dtype_ && p->format() == first.format() &&
                      (p->bias_ != nullptr) == (first.bias_ != nullptr);
    if (!same) return nullptr;
    // Sparse rows are stacked tile row by tile row (every format: 128 rows).
    if (p->sparse_ && p != parts.back() && p->out_ % tiled_csl::kTileM != 0) return nullptr;
  }
  static_assert(tiled_csl::kTileM == bitmap::kTileM && tiled_csl::kTileM == split24::kTileM,
                "every format stacks by the same tile rows");

  auto stacked = std::unique_ptr<Linear>(new Linear());
  Linear& s = *stacked;
  s.in_ = first.in_;
  s.dtype_ = first.dtype_;
  for (const Linear* p : parts) {
    s.name_ += (s.name_.empty() ? "" : " + ") + p->name_;
    s.out_ += p->out_;
  }
  const size_t elem = dtype_size(s.dtype_);
  // Copies each part's array of `bytes(p)` bytes one after another into a new buffer.
  auto concatenate = [&](const char* what, auto bytes, auto source) {
    size_t total = 0;
    for (const Linear* p : parts) total += bytes(*p);
    DeviceBuffer out(std::max<size_t>(total, 1), s.name_ + " " + what);
    size_t at = 0;
    for (const Linear* p : parts) {
      if (bytes(*p) > 0)
        SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(static_cast<char*>(out.data()) + at, source(*p), bytes(*p),
                                             cudaMemcpyDeviceToDevice, stream));
      at += bytes(*p);
    }
    return out;
  };
  if (!first.sparse_) {
    s.buffers_.push_back(concatenate(
        "weight", [&](const Linear& p) { return size_t(p.out_ * p.in_) * elem; },
        [](const Linear& p) { return p.weight_ptr_; }));
    s.weight_ptr_ = s.buffers_.back().data();
  } else {
    // Tiles are numbered row-major over the grid, so the parts' tiles follow
    // one another: offsets shifted by the words before, data concatenated.
    std::vector<uint32_t> offsets{0};
    std::map<const Linear*, size_t> words;  // each part's data words (its last tile offset)
    for (const Linear* p : parts) {
      const uint32_t base = offsets.back();
      offsets.pop_back();
      const std::vector<uint32_t> own = p->download_tile_offsets(stream);
      for (uint32_t o : own) offsets.push_back(base + o);
      words[p] = own.back();
    }
    DeviceBuffer data = concatenate(
        "words", [&](const Linear& p) { return words.at(&p) * sizeof(uint32_t); },
        [](const Linear& p) { return static_cast<const void*>(p.sparse_->words); });
    DeviceBuffer tile_offsets(offsets.size() * sizeof(uint32_t), s.name_ + " tile offsets");
    tile_offsets.upload(offsets.data(), tile_offsets.bytes(), stream);
    s.set_sparse(std::move(data), std::move(tile_offsets), offsets, first.sparse_->format, stream);
  }
  if (first.bias_) {
    s.buffers_.push_back(concatenate(
        "bias", [&](const Linear& p) { return size_t(p.out_) * elem; }, [](const Linear& p) { return p.bias_; }));
    s.bias_ = s.buffers_.back().data();
  }
  // The parts' arrays may be freed once this returns.
  SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream));
  return stacked;
}

std::vector<uint32_t> Linear::download_tile_offsets(cudaStream_t stream) const {
  std::vector<uint32_t> offsets(spmm_tile_count(out_, in_) + 1);
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(offsets.data(), sparse_->tile_offsets, offsets.size() * sizeof(uint32_t),
                                       cudaMemcpyDeviceToHost, stream));
  SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream));
  return offsets;
}

std::string Linear::format() const {
  if (!sparse_) return "dense";
  return sparse_format_name(sparse_->format);
}

size_t Linear::device_bytes() const {
  size_t total = 0;
  for (const DeviceBuffer& b : buffers_) total += b.bytes();
  return total;
}

bool Linear::expands_to_dense(int64_t n) const {
  return sparse_ && sparse_->format == SparseFormat::kSplit24 && n > kSplit24SpmmMaxRows;
}

size_t Linear::spmm_workspace_bytes(int64_t max_n) const {
  SPARSELLM_CHECK_ARG(max_n > 0, "Linear::spmm_workspace_bytes: max_n must be positive, got ", max_n);
  if (!sparse_) return 0;
  if (!expands_to_dense(max_n)) return sparsellm::spmm_workspace_bytes(out_, max_n, plan_blocks_);
  return std::max(sparsellm::spmm_workspace_bytes(out_, kSplit24SpmmMaxRows, plan_blocks_), dense_scratch_end());
}

size_t Linear::dense_scratch_end() const {
  return spmm_workspace_scratch_offset() + size_t(out_) * size_t(in_) * dtype_size(dtype_);
}

void Linear::gemm(const void* w, const void* x, void* y, int64_t n, const LinearWorkspace& workspace,
                  cudaStream_t stream, bool relu) const {
  DenseGemmParams p;
  p.x = x;
  p.w = w;
  p.bias = bias_;
  p.y = y;
  p.relu = relu;
  p.n = n;
  p.m = out_;
  p.k = in_;
  p.dtype = dtype_;
  p.workspace = workspace.gemm;
  p.workspace_bytes = workspace.gemm_bytes;
  dense_gemm(p, stream);
}

bool Linear::folds_norm(int64_t n) const {
  return sparse_.has_value() && n <= kSpmmNormFoldMaxRows && !expands_to_dense(n);
}

void Linear::forward(const void* x, void* y, int64_t n, const LinearWorkspace& workspace, cudaStream_t stream,
                     bool relu, const SpmmNormFold& norm) const {
  SPARSELLM_CHECK_ARG(n > 0, "Linear ", name_, ": n must be positive, got ", n);
  SPARSELLM_CHECK_ARG(x != nullptr && y != nullptr, "Linear ", name_, ": x and y must be device pointers, not null");
  SPARSELLM_CHECK_ARG((!norm.out.gamma && !norm.in.sumsq) || folds_norm(n), "Linear ", name_,
                      ": a norm fold needs a sparse weight and at most ", kSpmmNormFoldMaxRows, " rows, got ",
                      format(), " and ", n);
  if (!sparse_) return gemm(weight_ptr_, x, y, n, workspace, stream, relu);
  if (expands_to_dense(n)) {  // W expanded into the SpMM workspace's scratch, then multiplied by cuBLAS
    SPARSELLM_CHECK_ARG(workspace.spmm_bytes >= dense_scratch_end(), "Linear ", name_, ": the SpMM workspace of ",
                        workspace.spmm_bytes, " bytes cannot hold the dense weight for ", n, " rows (",
                        dense_scratch_end(), " needed)");
    void* dense = static_cast<char*>(workspace.spmm) + spmm_workspace_scratch_offset();
    spmm_split24_to_dense(*sparse_, dense, stream);
    return gemm(dense, x, y, n, workspace, stream, relu);
  }
  SpmmParams p;
  p.x = x;
  p.bias = bias_;
  p.y = y;
  p.relu = relu;
  p.n = n;
  p.weight = *sparse_;
  p.plan = static_cast<const StreamKBlock*>(plan_);
  p.plan_blocks = plan_blocks_;
  p.workspace = workspace.spmm;
  p.workspace_bytes = workspace.spmm_bytes;
  p.norm = norm;
  spmm(p, stream);
}

}  // namespace sparsellm
