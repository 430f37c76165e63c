// Row gather (embedding.h):
//
//   out[i, :] = (accumulate ? out[i, :] : 0) + table[ids[i] + offset, :]     i < n
//
// Grid (n, ⌈width / (VEC · threads)⌉): block (i, y) moves one stretch of row i,
// one VEC-element vector per thread (16-byte loads and stores when every
// address and stride allows, else single elements). The sum is formed in fp32
// and rounded once. An id outside [0, rows) leaves its output row untouched:
// the kernel never reads outside the table, whatever the ids hold.
#include "kernels/embedding/embedding.h"

#include <algorithm>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kThreads = 256;

struct EmbeddingArgs {
  const void* table;     // [rows, width], row stride table_stride
  const int32_t* ids;    // [n]
  void* out;             // [n, width], row stride out_stride
  int64_t width, rows, table_stride, out_stride;
  int32_t offset;
  bool accumulate;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) embedding_kernel(EmbeddingArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  const int64_t i = blockIdx.x;
  const int64_t c = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;  // first column
  if (c >= a.width) return;
  const int64_t row = int64_t(a.ids[i]) + a.offset;
  if (row < 0 || row >= a.rows) return;
  const T* src = static_cast<const T*>(a.table) + row * a.table_stride + c;
  T* dst = static_cast<T*>(a.out) + i * a.out_stride + c;
  float v[VEC];
  load_vec<T, VEC>(src, v);
  if (a.accumulate) {
    float o[VEC];
    load_vec<T, VEC>(dst, o);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] += o[e];
  }
  store_vec<T, VEC>(dst, v);
}

}  // namespace

void embedding(const EmbeddingParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "embedding: unknown dtype");
  SPARSELLM_CHECK_ARG(p.n >= 0 && p.width > 0 && p.rows > 0, "embedding: need n >= 0, width > 0, rows > 0; got n=",
                      p.n, " width=", p.width, " rows=", p.rows);
  if (p.n == 0) return;
  SPARSELLM_CHECK_ARG(p.table != nullptr && p.ids != nullptr && p.out != nullptr,
                      "embedding: table, ids and out must be device pointers, not null");
  const int64_t table_stride = p.table_stride == 0 ? p.width : p.table_stride;
  const int64_t out_stride = p.out_stride == 0 ? p.width : p.out_stride;
  SPARSELLM_CHECK_ARG(table_stride >= p.width && out_stride >= p.width, "embedding: row strides (table ",
                      table_stride, ", out ", out_stride, ") must be >= width ", p.width);
  SPARSELLM_CHECK_ARG(p.n <= INT32_MAX, "embedding: n=", p.n, " exceeds the grid limit");

  const bool vec8 = p.width % 8 == 0 && table_stride % 8 == 0 && out_stride % 8 == 0 && kernels::aligned16(p.table) &&
                    kernels::aligned16(p.out);
  const int vec = vec8 ? 8 : 1;
  const int64_t vectors = kernels::ceil_div(p.width, vec);
  const int threads = int(std::min<int64_t>(kThreads, kernels::ceil_div(vectors, 32) * 32));
  const int64_t chunks = kernels::ceil_div(vectors, threads);
  SPARSELLM_CHECK_ARG(chunks <= 65535, "embedding: width ", p.width, " too large");
  const EmbeddingArgs args{p.table, p.ids, p.out, p.width, p.rows, table_stride, out_stride, p.offset, p.accumulate};
  const dim3 grid(unsigned(p.n), unsigned(chunks));
  kernels::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("embedding_kernel", embedding_kernel<T, 8>, grid, threads, 0, stream, args);
    } else {
      kernels::launch_chained("embedding_kernel", embedding_kernel<T, 1>, grid, threads, 0, stream, args);
    }
  });
}

}  // namespace sparsellm
