// The model's key/value cache (see kv_cache.h).
#include "runtime/kv_cache.h"

#include "common/check.h"

namespace sparsellm {

size_t KvCache::bytes_for(int32_t layers, int32_t slots, int32_t kv_heads, int32_t max_seq, int32_t head_dim,
                          DType dtype) {
  return size_t(layers) * 2 * size_t(slots) * size_t(kv_heads) * size_t(max_seq) * size_t(head_dim) *
         dtype_size(dtype);
}

KvCache::KvCache(int32_t layers, int32_t slots, int32_t kv_heads, int32_t max_seq, int32_t head_dim, DType dtype)
    : layers_(layers), slots_(slots), kv_heads_(kv_heads), max_seq_(max_seq), head_dim_(head_dim), dtype_(dtype) {
  SPARSELLM_CHECK_ARG(layers > 0 && slots > 0 && kv_heads > 0 && max_seq > 0 && head_dim > 0,
                      "KV cache: every dimension must be positive (layers ", layers, ", slots ", slots, ", kv heads ",
                      kv_heads, ", max_seq ", max_seq, ", head_dim ", head_dim, ")");
  layer_elements_ = size_t(slots) * size_t(kv_heads) * size_t(max_seq) * size_t(head_dim);
  buffer_ = DeviceBuffer(bytes_for(layers, slots, kv_heads, max_seq, head_dim, dtype),
                         detail::concat("KV cache (", layers, " layers x ", slots, " sequences x ", max_seq,
                                        " tokens)"));
}

KvCacheView KvCache::layer(int32_t l) const {
  SPARSELLM_CHECK_ARG(l >= 0 && l < layers_, "KV cache: layer ", l, " out of range [0, ", layers_, ")");
  char* base = buffer_.as<char>() + size_t(l) * 2 * layer_elements_ * dtype_size(dtype_);
  KvCacheView view;
  view.k = base;
  view.v = base + layer_elements_ * dtype_size(dtype_);
  view.slots = slots_;
  view.kv_heads = kv_heads_;
  view.max_seq = max_seq_;
  view.head_dim = head_dim_;
  return view;
}

}  // namespace sparsellm
