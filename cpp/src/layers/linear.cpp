// Linear layer: y[n, out] = x[n, in] · W[out, in]ᵀ (+ b[out]).
//
// Load time (constructor): the checkpoint entry decides the path.
//   dense      W [out, in] uploaded (or drawn) as is       → dense_gemm (cuBLASLt)
//   tiled_csl  tile_offsets [tiles + 1] and the data array
//   bitmap     (words / tiles) uploaded (or drawn,
//              runtime/weights.h); the stream-K plan
//              computed on the host from the offsets
//              for this GPU's block count and uploaded     → spmm (dispatches on
//                                                             the format)
// The bias, when named, is a dense [out] vector applied in the GEMM / SpMM
// epilogue. Shapes and formats are checked before anything touches the GPU,
// so a wrong name or shape is a FormatError naming the tensor, never a
// half-loaded layer. Uploads are asynchronous on the given stream.
//
// forward() enqueues one GEMM or SpMM on the caller's stream: no allocation,
// no synchronization.
#include "layers/linear.h"

#include "common/check.h"
#include "runtime/weights.h"
#include "sparsellm/error.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"

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
  if (w.format != "dense" && w.format != "tiled_csl" && w.format != "bitmap")
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
  } else {  // tiled_csl, bitmap: the same tile grid, offsets and plan
    SparseUpload weight = upload_sparse(checkpoint, weight_name, stream);
    const std::vector<StreamKBlock> plan = spmm_plan(weight.host_offsets.data(), out_, in_, spmm_plan_blocks());
    plan_blocks_ = int(plan.size());
    SparseMatrixView view;
    view.words = weight.data.as<const uint32_t>();  // null for an all-zero weight
    view.tile_offsets = weight.tile_offsets.as<const uint32_t>();
    view.m = out_;
    view.k = in_;
    view.dtype = dtype_;
    view.format = w.format == "bitmap" ? SparseFormat::kBitmap : SparseFormat::kTiledCsl;
    sparse_ = view;
    buffers_.push_back(std::move(weight.data));
    buffers_.push_back(std::move(weight.tile_offsets));
    // `plan` and the host offsets die with this scope; that is safe: a copy
    // from pageable memory returns only once its source has been staged.
    DeviceBuffer plan_buffer(plan.size() * sizeof(StreamKBlock), weight_name + " stream-K plan");
    plan_buffer.upload(plan.data(), plan_buffer.bytes(), stream);
    plan_ = plan_buffer.data();
    buffers_.push_back(std::move(plan_buffer));
  }
  if (bias) {
    buffers_.push_back(upload_dense(checkpoint, bias_name, stream));
    bias_ = buffers_.back().data();
  }
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

std::string Linear::format() const {
  if (!sparse_) return "dense";
  return sparse_->format == SparseFormat::kBitmap ? "bitmap" : "tiled_csl";
}

size_t Linear::device_bytes() const {
  size_t total = 0;
  for (const DeviceBuffer& b : buffers_) total += b.bytes();
  return total;
}

size_t Linear::spmm_workspace_bytes(int64_t max_n) const {
  SPARSELLM_CHECK_ARG(max_n > 0, "Linear::spmm_workspace_bytes: max_n must be positive, got ", max_n);
  if (!sparse_) return 0;
  return sparsellm::spmm_workspace_bytes(out_, max_n, plan_blocks_);
}

void Linear::forward(const void* x, void* y, int64_t n, const LinearWorkspace& workspace, cudaStream_t stream) const {
  SPARSELLM_CHECK_ARG(n > 0, "Linear ", name_, ": n must be positive, got ", n);
  SPARSELLM_CHECK_ARG(x != nullptr && y != nullptr, "Linear ", name_, ": x and y must be device pointers, not null");
  if (!sparse_) {
    DenseGemmParams p;
    p.x = x;
    p.w = weight_ptr_;
    p.bias = bias_;
    p.y = y;
    p.n = n;
    p.m = out_;
    p.k = in_;
    p.dtype = dtype_;
    p.workspace = workspace.gemm;
    p.workspace_bytes = workspace.gemm_bytes;
    dense_gemm(p, stream);
    return;
  }
  SpmmParams p;
  p.x = x;
  p.bias = bias_;
  p.y = y;
  p.n = n;
  p.weight = *sparse_;
  p.plan = static_cast<const StreamKBlock*>(plan_);
  p.plan_blocks = plan_blocks_;
  p.workspace = workspace.spmm;
  p.workspace_bytes = workspace.spmm_bytes;
  spmm(p, stream);
}

}  // namespace sparsellm
