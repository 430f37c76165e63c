// KV-cache append (kv_cache.h):
//
//   cache.k[slot[t], g, position[t], :] = k[t, g·head_dim : (g+1)·head_dim]   (and v)
//
// Grid (tokens, ⌈kv_heads · head_dim / (VEC · threads)⌉): each thread copies one
// vector of the token's K row and the same vector of its V row, 16 bytes at a
// time when the input strides and pointers allow (head_dim is a multiple of 8,
// so cache rows always do). A token whose slot or position lies outside the
// cache is skipped: the kernel never writes outside the cache.
#include "kernels/attention/kv_cache.h"

#include <algorithm>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kThreads = 128;

struct KvWriteArgs {
  const void* k;  // [tokens, kv_heads · head_dim], row stride k_stride
  const void* v;  // [tokens, kv_heads · head_dim], row stride v_stride
  int64_t k_stride, v_stride;
  void* cache_k;  // [slots, kv_heads, max_seq, head_dim]
  void* cache_v;
  const int32_t* slot;      // [tokens]
  const int32_t* position;  // [tokens]
  int32_t slots, kv_heads, max_seq, head_dim;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) kv_cache_write_kernel(KvWriteArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  const int64_t t = blockIdx.x;
  const int64_t e = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;  // element in the token's row
  if (e >= int64_t(a.kv_heads) * a.head_dim) return;
  const int32_t slot = a.slot[t], pos = a.position[t];
  if (!kv_cache_holds(slot, pos, a.slots, a.max_seq)) return;
  const int64_t g = e / a.head_dim, d = e % a.head_dim;  // VEC divides head_dim: a vector stays in one head
  const int64_t dst = kv_cache_row(slot, g, pos, a.kv_heads, a.max_seq, a.head_dim) + d;
  float buf[VEC];
  load_vec<T, VEC>(static_cast<const T*>(a.k) + t * a.k_stride + e, buf);
  store_vec<T, VEC>(static_cast<T*>(a.cache_k) + dst, buf);
  load_vec<T, VEC>(static_cast<const T*>(a.v) + t * a.v_stride + e, buf);
  store_vec<T, VEC>(static_cast<T*>(a.cache_v) + dst, buf);
}

}  // namespace

void kv_cache_write(const KvCacheWriteParams& p, cudaStream_t stream) {
  const KvCacheView& c = p.cache;
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "kv_cache_write: unknown dtype");
  SPARSELLM_CHECK_ARG(p.tokens >= 0 && p.tokens <= INT32_MAX, "kv_cache_write: tokens=", p.tokens, " out of range");
  SPARSELLM_CHECK_ARG(c.slots > 0 && c.kv_heads > 0 && c.max_seq > 0, "kv_cache_write: cache needs slots, kv_heads, ",
                      "max_seq > 0; got ", c.slots, ", ", c.kv_heads, ", ", c.max_seq);
  SPARSELLM_CHECK_ARG(c.head_dim >= 8 && c.head_dim <= 256 && c.head_dim % 8 == 0,
                      "kv_cache_write: head_dim must be a multiple of 8 in [8, 256], got ", c.head_dim);
  if (p.tokens == 0) return;
  SPARSELLM_CHECK_ARG(p.k != nullptr && p.v != nullptr && c.k != nullptr && c.v != nullptr,
                      "kv_cache_write: k, v and the cache buffers must not be null");
  SPARSELLM_CHECK_ARG(p.place.slot != nullptr && p.place.position != nullptr,
                      "kv_cache_write: place.slot and place.position must not be null");
  SPARSELLM_CHECK_ARG(kernels::aligned16(c.k) && kernels::aligned16(c.v), "kv_cache_write: cache buffers must be ",
                      "16-byte aligned");
  const int64_t width = int64_t(c.kv_heads) * c.head_dim;
  const int64_t k_stride = p.k_stride == 0 ? width : p.k_stride;
  const int64_t v_stride = p.v_stride == 0 ? width : p.v_stride;
  SPARSELLM_CHECK_ARG(k_stride >= width && v_stride >= width, "kv_cache_write: row strides (k ", k_stride, ", v ",
                      v_stride, ") must be >= kv_heads * head_dim = ", width);
  const bool vec8 = k_stride % 8 == 0 && v_stride % 8 == 0 && kernels::aligned16(p.k) && kernels::aligned16(p.v);
  const int vec = vec8 ? 8 : 1;
  const dim3 grid(unsigned(p.tokens), unsigned(kernels::ceil_div(width / vec, kThreads)));
  const KvWriteArgs args{p.k, p.v, k_stride, v_stride, c.k, c.v, p.place.slot, p.place.position,
                         c.slots, c.kv_heads, c.max_seq, c.head_dim};
  kernels::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("kv_cache_write_kernel", kv_cache_write_kernel<T, 8>, grid, kThreads, 0, stream, args);
    } else {
      kernels::launch_chained("kv_cache_write_kernel", kv_cache_write_kernel<T, 1>, grid, kThreads, 0, stream, args);
    }
  });
}

}  // namespace sparsellm
