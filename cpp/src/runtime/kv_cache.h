// The key/value cache of a whole model: one device allocation, made once, for
// max_batch sequences (slots) of up to max_seq tokens in every layer.
//
//   per layer l:  K_l, V_l [slots, kv_heads, max_seq, head_dim]   (kernels/attention/kv_cache.h)
//   bytes = layers · 2 · slots · kv_heads · max_seq · head_dim · 2
//
// A sequence owns slot b for the duration of a generate call; nothing is
// cleared between calls, since attention reads only positions ≤ the query's
// own, which the current sequence has already written.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/attention/kv_cache.h"
#include "runtime/device_buffer.h"
#include "sparsellm/types.h"

namespace sparsellm {

class KvCache {
 public:
  KvCache() = default;
  KvCache(int32_t layers, int32_t slots, int32_t kv_heads, int32_t max_seq, int32_t head_dim, DType dtype);

  static size_t bytes_for(int32_t layers, int32_t slots, int32_t kv_heads, int32_t max_seq, int32_t head_dim,
                          DType dtype);
  KvCacheView layer(int32_t l) const;
  size_t bytes() const { return buffer_.bytes(); }
  int32_t slots() const { return slots_; }
  int32_t max_seq() const { return max_seq_; }

 private:
  DeviceBuffer buffer_;
  int32_t layers_ = 0, slots_ = 0, kv_heads_ = 0, max_seq_ = 0, head_dim_ = 0;
  DType dtype_ = DType::kFloat16;
  size_t layer_elements_ = 0;  // elements of one of K_l, V_l
};

}  // namespace sparsellm
