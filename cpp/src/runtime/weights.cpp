// Stored tensors uploaded, generated ones drawn (weights.h).
#include "runtime/weights.h"

#include <cstring>

#include "common/check.h"
#include "kernels/random_weights/random_weights.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"
#include "sparsellm/spmm.h"
#include "sparsellm/split24.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

using detail::concat;

// A component as one device buffer (asynchronous copy from the mapping).
DeviceBuffer upload_component(const ComponentView& c, cudaStream_t stream) {
  DeviceBuffer buffer(c.bytes, c.key);
  buffer.upload(c.data, c.bytes, stream);
  return buffer;
}

// What kernels/random_weights draws for tensor t of a generated checkpoint.
RandomWeightParams random_params(const Checkpoint& checkpoint, const TensorEntry& t) {
  RandomWeightParams p;
  p.rows = t.shape.size() == 2 ? t.shape[0] : 1;
  p.cols = t.shape.back();
  p.seed = checkpoint.seed();
  uint32_t hash = 2166136261u;  // FNV-1a of the name, then the rank
  for (unsigned char c : t.name) hash = (hash ^ c) * 16777619u;
  p.tensor = (hash ^ uint32_t(checkpoint.rank())) * 16777619u;
  p.std = checkpoint.weight_std();
  // Norm weights (1-D "<...norm...>.weight") sit around 1, as a trained model's do.
  const size_t dot = t.name.rfind('.');
  const std::string module = t.name.substr(0, dot), kind = t.name.substr(dot + 1);
  const std::string last = module.substr(module.rfind('.') + 1);
  p.offset = t.shape.size() == 1 && kind == "weight" && last.find("norm") != std::string::npos ? 1.0f : 0.0f;
  p.density = t.pruned ? 1.0 - t.sparsity : 1.0;
  p.dtype = checkpoint.dtype();
  return p;
}

}  // namespace

SparseUpload draw_bitmap(const RandomWeightParams& p, const std::string& name, cudaStream_t stream) {
  const int64_t tiles = (p.rows + bitmap::kTileM - 1) / bitmap::kTileM * ((p.cols + bitmap::kTileK - 1) / bitmap::kTileK);
  SparseUpload out;
  out.tile_offsets = DeviceBuffer(size_t(tiles + 1) * sizeof(uint32_t), name + " tile offsets");
  random_bitmap_counts(out.tile_offsets.as<uint32_t>(), p, stream);
  std::vector<uint32_t> counts(static_cast<size_t>(tiles));
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(counts.data(), out.tile_offsets.data(), counts.size() * sizeof(uint32_t),
                                       cudaMemcpyDeviceToHost, stream));
  SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream));
  out.host_offsets.assign(size_t(tiles + 1), 0u);
  int64_t words = 0;
  for (int64_t i = 0; i < tiles; ++i) {
    words += bitmap::tile_words(counts[size_t(i)]);
    if (words > int64_t(UINT32_MAX))
      throw InvalidArgument(concat("tensor ", name, ": more than 2^32 bitmap words"));
    out.host_offsets[size_t(i + 1)] = uint32_t(words);
  }
  out.tile_offsets.upload(out.host_offsets.data(), out.tile_offsets.bytes(), stream);
  out.data = DeviceBuffer(size_t(words) * sizeof(uint32_t), name + " tiles");
  if (words > 0) {
    SPARSELLM_CHECK_CUDA(cudaMemsetAsync(out.data.data(), 0, out.data.bytes(), stream));  // the padding
    random_bitmap_tiles(out.data.as<uint32_t>(), out.tile_offsets.as<const uint32_t>(), p, stream);
  }
  return out;
}

namespace {

// The matrix random_dense draws (the one draw_bitmap encodes), brought to the
// host and encoded there by `encode` (a format's host encoder) into `data`.
template <typename Host, typename Encode>
SparseUpload draw_host_encoded(const RandomWeightParams& p, const std::string& name, cudaStream_t stream,
                               Encode encode, std::vector<uint32_t> Host::*data) {
  std::vector<uint16_t> dense(size_t(p.rows * p.cols));
  {
    DeviceBuffer drawn(dense.size() * sizeof(uint16_t), name + " (drawn dense for encoding)");
    random_dense(drawn.data(), p, stream);
    SPARSELLM_CHECK_CUDA(
        cudaMemcpyAsync(dense.data(), drawn.data(), drawn.bytes(), cudaMemcpyDeviceToHost, stream));
    SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream));
  }
  const Host encoded = encode(dense.data(), p.rows, p.cols, p.dtype, 0);
  const std::vector<uint32_t>& words = encoded.*data;
  SparseUpload out;
  out.host_offsets = encoded.tile_offsets;
  out.tile_offsets = DeviceBuffer(out.host_offsets.size() * sizeof(uint32_t), name + " tile offsets");
  out.tile_offsets.upload(out.host_offsets.data(), out.tile_offsets.bytes(), stream);
  out.data = DeviceBuffer(words.size() * sizeof(uint32_t), name + " words");
  // `encoded` may be freed on return: a copy from pageable memory returns once its source is staged.
  if (!words.empty()) out.data.upload(words.data(), words.size() * sizeof(uint32_t), stream);
  return out;
}

}  // namespace

SparseUpload draw_tiled_csl(const RandomWeightParams& p, const std::string& name, cudaStream_t stream) {
  return draw_host_encoded(p, name, stream, &encode_tiled_csl, &TiledCslHost::words);
}

SparseUpload draw_split24(const RandomWeightParams& p, const std::string& name, cudaStream_t stream) {
  return draw_host_encoded(p, name, stream, &encode_split24, &Split24Host::data);
}

DeviceBuffer upload_dense(const Checkpoint& checkpoint, const std::string& name, cudaStream_t stream) {
  const TensorEntry& t = checkpoint.tensor(name);
  if (t.format != "dense")
    throw FormatError(concat(checkpoint.rank_file(), ": tensor ", name, " is stored as ", t.format, ", expected dense"));
  if (checkpoint.generated()) {
    const RandomWeightParams p = random_params(checkpoint, t);
    DeviceBuffer buffer(size_t(p.rows * p.cols) * dtype_size(p.dtype), name);
    random_dense(buffer.data(), p, stream);
    return buffer;
  }
  const ComponentView& c = t.component("");
  if (c.dtype != dtype_name(checkpoint.dtype()))
    throw FormatError(concat(checkpoint.rank_file(), ": tensor ", name, " is ", c.dtype, ", expected ",
                             dtype_name(checkpoint.dtype())));
  return upload_component(c, stream);
}

SparseUpload upload_sparse(const Checkpoint& checkpoint, const std::string& name, cudaStream_t stream) {
  const TensorEntry& t = checkpoint.tensor(name);
  SparseFormat format;
  if (!sparse_format_named(t.format, &format))
    throw FormatError(concat(checkpoint.rank_file(), ": tensor ", name, " is stored as ", t.format,
                             ", expected a sparse format"));
  if (checkpoint.generated()) {
    const RandomWeightParams p = random_params(checkpoint, t);
    switch (format) {
      case SparseFormat::kBitmap: return draw_bitmap(p, name, stream);
      case SparseFormat::kSplit24: return draw_split24(p, name, stream);
      default: return draw_tiled_csl(p, name, stream);
    }
  }
  const ComponentView& offsets = t.component(".tile_offsets");
  SparseUpload out;
  // The mapping may leave the uint32 array unaligned: the host copy by memcpy.
  out.host_offsets.resize(offsets.bytes / sizeof(uint32_t));
  std::memcpy(out.host_offsets.data(), offsets.data, out.host_offsets.size() * sizeof(uint32_t));
  out.data = upload_component(t.component(format == SparseFormat::kTiledCsl ? ".words" : ".tiles"), stream);
  out.tile_offsets = upload_component(offsets, stream);
  return out;
}

}  // namespace sparsellm
