// Elementwise activations (activation.h), fp32 math:
//
//   relu(x) = max(x, 0)        gelu(x) = x · Φ(x) = ½ x (1 + erf(x / √2))
//   silu(x) = x · σ(x) = x / (1 + e^−x)
//
//   activation:        x[i] = act(x[i])                           in place
//   gated_activation:  out[r, c] = act(gate[r, c]) · up[r, c]     (SwiGLU with silu)
//
// Memory-bound: 16-byte vectors of 8 elements when sizes, strides and
// pointers allow (else single elements), one vector per thread per step.
// activation: a 1-D grid-stride loop. gated_activation: grid (column
// stretches, row stride); each element is read and written by one thread, so
// out may alias gate or up when that input's row stride is cols.
#include "kernels/activation/activation.h"

#include <algorithm>
#include <cstring>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this

__device__ __forceinline__ float apply(Activation kind, float v) {
  switch (kind) {
    case Activation::kRelu:
      return v < 0.f ? 0.f : v;  // NaN passes through, as in torch
    case Activation::kGelu:
      return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    default:
      return v / (1.f + expf(-v));
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) activation_kernel(void* data, int64_t vectors, Activation kind) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  T* x = static_cast<T*>(data);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < vectors; i += int64_t(gridDim.x) * blockDim.x) {
    float v[VEC];
    load_vec<T, VEC>(x + i * VEC, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = apply(kind, v[e]);
    store_vec<T, VEC>(x + i * VEC, v);
  }
}

struct GatedArgs {
  const void* gate;  // [rows, cols], row stride gate_stride
  const void* up;    // [rows, cols], row stride up_stride
  void* out;         // [rows, cols]
  int64_t rows, cols, gate_stride, up_stride;
  Activation kind;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) gated_activation_kernel(GatedArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= a.cols) return;
  for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y) {
    float g[VEC], u[VEC];
    load_vec<T, VEC>(static_cast<const T*>(a.gate) + r * a.gate_stride + c, g);
    load_vec<T, VEC>(static_cast<const T*>(a.up) + r * a.up_stride + c, u);
#pragma unroll
    for (int e = 0; e < VEC; ++e) g[e] = apply(a.kind, g[e]) * u[e];
    store_vec<T, VEC>(static_cast<T*>(a.out) + r * a.cols + c, g);
  }
}

void check_kind(Activation kind, const char* op) {
  SPARSELLM_CHECK_ARG(kind == Activation::kRelu || kind == Activation::kGelu || kind == Activation::kSilu, op,
                      ": unknown activation ", int(kind));
}

}  // namespace

void activation(const ActivationParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "activation: unknown dtype");
  check_kind(p.kind, "activation");
  SPARSELLM_CHECK_ARG(p.n >= 0, "activation: n must be >= 0, got ", p.n);
  if (p.n == 0) return;
  SPARSELLM_CHECK_ARG(p.x != nullptr, "activation: x must not be null");
  const bool vec8 = p.n % 8 == 0 && kernels::aligned16(p.x);
  const int64_t vectors = vec8 ? p.n / 8 : p.n;
  const unsigned blocks = unsigned(std::min(kernels::ceil_div(vectors, kThreads), kMaxBlocks));
  kernels::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("activation_kernel", activation_kernel<T, 8>,
                              blocks, kThreads, 0, stream, p.x, vectors, p.kind);
    } else {
      kernels::launch_chained("activation_kernel", activation_kernel<T, 1>,
                              blocks, kThreads, 0, stream, p.x, vectors, p.kind);
    }
  });
}

void gated_activation(const GatedActivationParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "gated_activation: unknown dtype");
  check_kind(p.kind, "gated_activation");
  SPARSELLM_CHECK_ARG(p.rows >= 0 && p.cols > 0, "gated_activation: need rows >= 0 and cols > 0; got rows=", p.rows,
                      " cols=", p.cols);
  if (p.rows == 0) return;
  SPARSELLM_CHECK_ARG(p.gate != nullptr && p.up != nullptr && p.out != nullptr,
                      "gated_activation: gate, up and out must not be null");
  SPARSELLM_CHECK_ARG(p.gate_stride >= p.cols && p.up_stride >= p.cols, "gated_activation: row strides (gate ",
                      p.gate_stride, ", up ", p.up_stride, ") must be >= cols ", p.cols);
  // In place only row for row: with another stride, row r of out would overwrite later rows' inputs.
  SPARSELLM_CHECK_ARG((p.out != p.gate || p.gate_stride == p.cols) && (p.out != p.up || p.up_stride == p.cols),
                      "gated_activation: out may alias gate or up only when that input's row stride equals cols");
  const bool vec8 = p.cols % 8 == 0 && p.gate_stride % 8 == 0 && p.up_stride % 8 == 0 &&
                    kernels::aligned16(p.gate) && kernels::aligned16(p.up) && kernels::aligned16(p.out);
  const int vec = vec8 ? 8 : 1;
  const int64_t col_blocks = kernels::ceil_div(kernels::ceil_div(p.cols, vec), kThreads);
  SPARSELLM_CHECK_ARG(col_blocks <= INT32_MAX, "gated_activation: cols=", p.cols, " too large");
  const dim3 grid(unsigned(col_blocks), unsigned(std::min<int64_t>(p.rows, 65535)));
  const GatedArgs args{p.gate, p.up, p.out, p.rows, p.cols, p.gate_stride, p.up_stride, p.kind};
  kernels::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("gated_activation_kernel", gated_activation_kernel<T, 8>,
                              grid, kThreads, 0, stream, args);
    } else {
      kernels::launch_chained("gated_activation_kernel", gated_activation_kernel<T, 1>,
                              grid, kThreads, 0, stream, args);
    }
  });
}

Activation activation_from_name(const char* name) {
  SPARSELLM_CHECK_ARG(name != nullptr, "activation_from_name: null name");
  if (std::strcmp(name, "relu") == 0) return Activation::kRelu;
  if (std::strcmp(name, "gelu") == 0) return Activation::kGelu;
  if (std::strcmp(name, "silu") == 0) return Activation::kSilu;
  throw InvalidArgument(detail::concat("unsupported activation \"", name,
                                       "\" (supported: relu, gelu, silu; the tanh approximations of GELU are not)"));
}

}  // namespace sparsellm
