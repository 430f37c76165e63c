// Transformer kernels (embedding, norm, activations, KV cache, attention,
// sampling) against CPU references on random data. Shapes are small enough to
// run under compute-sanitizer; every output buffer starts poisoned (NaN) and
// the KV cache is NaN outside the written positions, so a wrong index shows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "kernels/activation/activation.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/kv_cache.h"
#include "kernels/embedding/embedding.h"
#include "kernels/norm/norm.h"
#include "kernels/sampling/philox.h"
#include "kernels/sampling/sampling.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (device_count() == 0) GTEST_SKIP() << "no GPU"

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) {
    SPARSELLM_CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& host) {
    SPARSELLM_CHECK_CUDA(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  void poison() { SPARSELLM_CHECK_CUDA(cudaMemset(ptr, 0xFF, count * sizeof(T))); }  // NaN in fp16 and bf16
  std::vector<T> download() const {
    std::vector<T> out(count);
    SPARSELLM_CHECK_CUDA(cudaMemcpy(out.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }
};

uint16_t to_bits(float v, DType t) {
  return t == DType::kFloat16 ? __half_as_ushort(__float2half(v)) : __bfloat16_as_ushort(__float2bfloat16(v));
}
float from_bits(uint16_t b, DType t) {
  return t == DType::kFloat16 ? __half2float(__ushort_as_half(b)) : __bfloat162float(__ushort_as_bfloat16(b));
}
float round_to(float v, DType t) { return from_bits(to_bits(v, t), t); }
const char* short_name(DType t) { return t == DType::kFloat16 ? "fp16" : "bf16"; }

// Random values already representable in the storage type: bits for the device, floats for the reference.
struct Tensor {
  std::vector<uint16_t> bits;
  std::vector<float> f;
  Tensor(size_t n, DType t, std::mt19937& rng, float sd = 1.f, float mean = 0.f) : bits(n), f(n) {
    std::normal_distribution<float> normal(mean, sd);
    for (size_t i = 0; i < n; ++i) {
      bits[i] = to_bits(normal(rng), t);
      f[i] = from_bits(bits[i], t);
    }
  }
};

// Output tolerance: |got − ref| ≤ tol · (1 + |ref|), tol a few units of the storage type's rounding.
float tolerance(DType t) { return t == DType::kFloat16 ? 2e-3f : 1.6e-2f; }

void expect_close(const std::vector<uint16_t>& got, const std::vector<float>& ref, DType t, float tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = from_bits(got[i], t);
    if (!(std::fabs(g - ref[i]) <= tol * (1.f + std::fabs(ref[i])))) {
      if (++bad <= 5) ADD_FAILURE() << what << ": element " << i << " got " << g << ", expected " << ref[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements off";
}

// ---------------------------------------------------------------------------------------------
// Embedding

using EmbeddingCase = std::tuple<int64_t, int64_t, int64_t, bool, DType>;  // width, table pad, out pad, accumulate
class EmbeddingTest : public ::testing::TestWithParam<EmbeddingCase> {};

TEST_P(EmbeddingTest, GathersRowsWithOffsetAndStrides) {
  SKIP_WITHOUT_GPU();
  const auto [width, table_pad, out_pad, accumulate, dtype] = GetParam();
  const int64_t rows = 53, n = 9, offset = 2;
  const int64_t ts = width + table_pad, os = width + out_pad;
  std::mt19937 rng(uint32_t(width * 7 + table_pad + out_pad * 3 + accumulate));
  Tensor table(rows * ts, dtype, rng), out0(n * os, dtype, rng);
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> pick(-offset, int32_t(rows - offset - 1));
  for (auto& id : ids) id = pick(rng);
  ids[0] = -offset;                 // first row
  ids[1] = int32_t(rows - offset - 1);  // last row
  DeviceBuffer<uint16_t> d_table(table.bits), d_out(out0.bits);
  DeviceBuffer<int32_t> d_ids(ids);

  EmbeddingParams p;
  p.table = d_table.ptr;
  p.ids = d_ids.ptr;
  p.out = d_out.ptr;
  p.n = n;
  p.width = width;
  p.rows = rows;
  p.table_stride = ts;
  p.out_stride = os;
  p.offset = int32_t(offset);
  p.accumulate = accumulate;
  p.dtype = dtype;
  embedding(p, nullptr);
  const std::vector<uint16_t> got = d_out.download();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < os; ++c) {
      const size_t o = i * os + c;
      if (c >= width) {
        EXPECT_EQ(got[o], out0.bits[o]) << "padding of row " << i << " touched";
        continue;
      }
      const float t = table.f[(ids[i] + offset) * ts + c];
      const float want = accumulate ? round_to(out0.f[o] + t, dtype) : t;
      ASSERT_EQ(from_bits(got[o], dtype), want) << "row " << i << " col " << c;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingTest,
                         ::testing::Combine(::testing::Values(int64_t(200), int64_t(203), int64_t(768)),
                                            ::testing::Values(int64_t(0), int64_t(8)),
                                            ::testing::Values(int64_t(0), int64_t(5)), ::testing::Bool(),
                                            ::testing::Values(DType::kFloat16, DType::kBFloat16)));

// ---------------------------------------------------------------------------------------------
// Norm

enum class Alias { kNone, kOutIsResidual, kOutIsX };
using NormCase = std::tuple<NormKind, bool, bool, Alias, int64_t, DType>;  // kind, beta, residual, alias, width

class NormTest : public ::testing::TestWithParam<NormCase> {};

TEST_P(NormTest, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const auto [kind, with_beta, with_residual, alias, width, dtype] = GetParam();
  const int64_t n = width > 8192 ? 3 : 7;
  std::mt19937 rng(uint32_t(width * 13 + int(kind) * 5 + with_beta * 3 + with_residual + int(alias) * 17));
  Tensor x(n * width, dtype, rng, 1.f, 0.3f), res(n * width, dtype, rng, 2.f, -0.5f);
  Tensor gamma(width, dtype, rng, 0.5f, 1.f), beta(width, dtype, rng, 0.2f);
  DeviceBuffer<uint16_t> d_x(x.bits), d_res(res.bits), d_gamma(gamma.bits), d_beta(beta.bits), d_out(n * width);
  d_out.poison();

  NormParams p;
  p.x = d_x.ptr;
  p.residual = with_residual ? d_res.ptr : nullptr;
  p.gamma = d_gamma.ptr;
  p.beta = with_beta ? d_beta.ptr : nullptr;
  p.out = alias == Alias::kOutIsResidual ? d_res.ptr : alias == Alias::kOutIsX ? d_x.ptr : d_out.ptr;
  p.n = n;
  p.width = width;
  p.eps = 1e-5f;
  p.kind = kind;
  p.dtype = dtype;
  norm(p, nullptr);

  std::vector<float> ref(n * width), sum(n * width);
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = &x.f[i * width];
    const float* rr = &res.f[i * width];
    std::vector<double> v(width);
    for (int64_t c = 0; c < width; ++c) {
      v[c] = with_residual ? round_to(rr[c] + xr[c], dtype) : xr[c];
      sum[i * width + c] = float(v[c]);
    }
    double mean = 0, ss = 0;
    for (double e : v) mean += e;
    mean /= double(width);
    if (kind == NormKind::kRmsNorm) mean = 0;
    for (double e : v) ss += (e - mean) * (e - mean);
    const double rstd = 1.0 / std::sqrt(ss / double(width) + 1e-5);
    for (int64_t c = 0; c < width; ++c)
      ref[i * width + c] = float((v[c] - mean) * rstd * gamma.f[c] + (with_beta ? beta.f[c] : 0.f));
  }
  const DeviceBuffer<uint16_t>& out = alias == Alias::kOutIsResidual ? d_res : alias == Alias::kOutIsX ? d_x : d_out;
  expect_close(out.download(), ref, dtype, tolerance(dtype), "norm out");
  if (with_residual && alias != Alias::kOutIsResidual) {
    const std::vector<uint16_t> got = d_res.download();
    for (size_t i = 0; i < sum.size(); ++i) ASSERT_EQ(from_bits(got[i], dtype), sum[i]) << "residual element " << i;
  }
}

std::string norm_name(const ::testing::TestParamInfo<NormCase>& info) {
  const auto& [kind, beta, residual, alias, width, dtype] = info.param;
  return std::string(kind == NormKind::kLayerNorm ? "ln" : "rms") + (beta ? "_beta" : "") +
         (residual ? "_res" : "") + (alias == Alias::kOutIsResidual ? "_outres" : alias == Alias::kOutIsX ? "_outx" : "") +
         "_w" + std::to_string(width) + "_" + short_name(dtype);
}

// Every meaningful combination at the given widths: RMSNorm has no beta, and
// the output can alias the residual only when there is one.
std::vector<NormCase> norm_cases(std::initializer_list<int64_t> widths) {
  std::vector<NormCase> cases;
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRmsNorm})
    for (bool with_beta : {false, true})
      for (bool with_residual : {false, true})
        for (Alias alias : {Alias::kNone, Alias::kOutIsResidual, Alias::kOutIsX})
          for (int64_t width : widths)
            for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
              if (kind == NormKind::kRmsNorm && with_beta) continue;
              if (alias == Alias::kOutIsResidual && !with_residual) continue;
              cases.emplace_back(kind, with_beta, with_residual, alias, width, dtype);
            }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    Widths, NormTest, ::testing::ValuesIn(norm_cases({200, 768, 5120, 12288})), norm_name);

// Rows longer than the register cache (512 threads × 32 floats) and odd widths.
INSTANTIATE_TEST_SUITE_P(
    WideAndOdd, NormTest,
    ::testing::Combine(::testing::Values(NormKind::kLayerNorm, NormKind::kRmsNorm), ::testing::Values(false),
                       ::testing::Values(true), ::testing::Values(Alias::kNone, Alias::kOutIsResidual),
                       ::testing::Values(int64_t(1), int64_t(37), int64_t(12289), int64_t(16411), int64_t(20480)),
                       ::testing::Values(DType::kFloat16)),
    norm_name);

TEST(NormValidation, RejectsBadArguments) {
  NormParams p;
  p.n = 2;
  p.width = 16;
  EXPECT_THROW(norm(p, nullptr), InvalidArgument);  // no x, no residual
  int dummy;
  p.x = &dummy;
  p.gamma = &dummy;
  p.out = &dummy;
  p.width = 0;
  EXPECT_THROW(norm(p, nullptr), InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Activations

double act_ref(Activation kind, double v) {
  switch (kind) {
    case Activation::kRelu: return v < 0 ? 0 : v;
    case Activation::kGelu: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    default: return v / (1 + std::exp(-v));
  }
}

using ActCase = std::tuple<Activation, int64_t, DType>;
class ActivationTest : public ::testing::TestWithParam<ActCase> {};

TEST_P(ActivationTest, InPlace) {
  SKIP_WITHOUT_GPU();
  const auto [kind, n, dtype] = GetParam();
  std::mt19937 rng(uint32_t(n + int(kind)));
  Tensor x(n, dtype, rng, 3.f);
  DeviceBuffer<uint16_t> d_x(x.bits);
  ActivationParams p;
  p.x = d_x.ptr;
  p.n = n;
  p.kind = kind;
  p.dtype = dtype;
  activation(p, nullptr);
  std::vector<float> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = float(act_ref(kind, x.f[i]));
  expect_close(d_x.download(), ref, dtype, tolerance(dtype), "activation");
}

TEST_P(ActivationTest, GatedFromFusedBuffer) {
  SKIP_WITHOUT_GPU();
  const auto [kind, n, dtype] = GetParam();
  const int64_t rows = 5, cols = n / 5;  // gate | up side by side in one [rows, 2 · cols] buffer
  std::mt19937 rng(uint32_t(n * 3 + int(kind)));
  Tensor fused(rows * 2 * cols, dtype, rng, 2.f);
  DeviceBuffer<uint16_t> d_fused(fused.bits), d_out(rows * cols);
  d_out.poison();
  GatedActivationParams p;
  p.gate = d_fused.ptr;
  p.up = d_fused.ptr + cols;
  p.out = d_out.ptr;
  p.rows = rows;
  p.cols = cols;
  p.gate_stride = p.up_stride = 2 * cols;
  p.kind = kind;
  p.dtype = dtype;
  gated_activation(p, nullptr);
  std::vector<float> ref(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      ref[r * cols + c] = float(act_ref(kind, fused.f[r * 2 * cols + c]) * fused.f[r * 2 * cols + cols + c]);
  expect_close(d_out.download(), ref, dtype, tolerance(dtype), "gated_activation");

  // In place over gate (contiguous gate, so out == gate row for row).
  Tensor gate(rows * cols, dtype, rng, 2.f), up(rows * cols, dtype, rng);
  DeviceBuffer<uint16_t> d_gate(gate.bits), d_up(up.bits);
  p.gate = d_gate.ptr;
  p.up = d_up.ptr;
  p.out = d_gate.ptr;
  p.gate_stride = p.up_stride = cols;
  gated_activation(p, nullptr);
  for (int64_t i = 0; i < rows * cols; ++i) ref[i] = float(act_ref(kind, gate.f[i]) * up.f[i]);
  expect_close(d_gate.download(), ref, dtype, tolerance(dtype), "gated_activation in place");
}

INSTANTIATE_TEST_SUITE_P(Kinds, ActivationTest,
                         ::testing::Combine(::testing::Values(Activation::kRelu, Activation::kGelu, Activation::kSilu),
                                            ::testing::Values(int64_t(4000), int64_t(1005)),
                                            ::testing::Values(DType::kFloat16, DType::kBFloat16)));

TEST(ActivationNames, ParseHuggingFaceNames) {
  EXPECT_EQ(activation_from_name("relu"), Activation::kRelu);
  EXPECT_EQ(activation_from_name("gelu"), Activation::kGelu);
  EXPECT_EQ(activation_from_name("silu"), Activation::kSilu);
  EXPECT_THROW(activation_from_name("gelu_new"), InvalidArgument);
  EXPECT_THROW(activation_from_name(nullptr), InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// KV cache + attention

struct Sequence {
  int32_t slot, length;
};

// Writes every position < length of each sequence into the cache from one fused QKV buffer
// ([tokens, (heads + 2 · kv_heads) · head_dim]), then attends with the query tokens `queries`
// (indices into that buffer) and compares with a double-precision reference. The workspace is
// `shared_ws` where given (reused across cases, as a model's forward calls share one), else its own.
void run_attention_case(DType dtype, int32_t heads, int32_t kv_heads, int32_t head_dim,
                        const std::vector<Sequence>& seqs, bool decode, int32_t max_seq, uint32_t seed,
                        DeviceBuffer<char>* shared_ws = nullptr) {
  std::mt19937 rng(seed);
  const int64_t qw = int64_t(heads) * head_dim, kw = int64_t(kv_heads) * head_dim, row = qw + 2 * kw;
  std::vector<int32_t> slot, pos;
  for (const auto& s : seqs)
    for (int32_t j = 0; j < s.length; ++j) {
      slot.push_back(s.slot);
      pos.push_back(j);
    }
  const int64_t tokens = int64_t(slot.size());
  Tensor qkv(tokens * row, dtype, rng);
  int32_t slots = 0;
  for (const auto& s : seqs) slots = std::max(slots, s.slot + 1);

  DeviceBuffer<uint16_t> d_qkv(qkv.bits);
  DeviceBuffer<int32_t> d_slot(slot), d_pos(pos);
  const size_t cache_elems = size_t(slots) * kv_heads * max_seq * head_dim;
  DeviceBuffer<uint16_t> d_k(cache_elems), d_v(cache_elems);
  d_k.poison();
  d_v.poison();

  KvCacheWriteParams w;
  w.k = d_qkv.ptr + qw;
  w.v = d_qkv.ptr + qw + kw;
  w.k_stride = w.v_stride = row;
  w.cache = KvCacheView{d_k.ptr, d_v.ptr, slots, kv_heads, max_seq, head_dim};
  w.place = TokenPlacement{d_slot.ptr, d_pos.ptr};
  w.tokens = tokens;
  w.dtype = dtype;
  kv_cache_write(w, nullptr);

  // Query tokens: all of them (prefill) or the last of each sequence (decode).
  std::vector<int64_t> queries;
  {
    int64_t t = 0;
    for (const auto& s : seqs) {
      if (decode) {
        queries.push_back(t + s.length - 1);
      } else {
        for (int32_t j = 0; j < s.length; ++j) queries.push_back(t + j);
      }
      t += s.length;
    }
  }
  const int64_t nq = int64_t(queries.size());
  std::vector<uint16_t> q_bits(nq * qw);
  std::vector<int32_t> q_slot(nq), q_pos(nq);
  int32_t max_positions = 0;
  for (int64_t i = 0; i < nq; ++i) {
    std::copy_n(&qkv.bits[queries[i] * row], qw, &q_bits[i * qw]);
    q_slot[i] = slot[queries[i]];
    q_pos[i] = pos[queries[i]];
    max_positions = std::max(max_positions, q_pos[i] + 1);
  }
  // The prefill case reads q in place from the fused buffer (row stride); decode from a packed copy.
  DeviceBuffer<uint16_t> d_q(q_bits), d_out(nq * qw);
  DeviceBuffer<int32_t> d_qslot(q_slot), d_qpos(q_pos);
  d_out.poison();
  const size_t ws_bytes = attention_workspace_bytes(nq, heads, head_dim, max_positions);
  DeviceBuffer<char> own_ws(shared_ws ? 0 : ws_bytes);
  DeviceBuffer<char>& d_ws = shared_ws ? *shared_ws : own_ws;
  ASSERT_GE(d_ws.count, ws_bytes);

  AttentionParams a;
  a.q = decode ? d_q.ptr : d_qkv.ptr;
  a.q_stride = decode ? qw : row;
  a.cache = w.cache;
  a.place = decode ? TokenPlacement{d_qslot.ptr, d_qpos.ptr} : TokenPlacement{d_slot.ptr, d_pos.ptr};
  a.out = d_out.ptr;
  a.tokens = nq;
  a.heads = heads;
  a.max_positions = max_positions;
  a.scale = 1.f / std::sqrt(float(head_dim));
  a.workspace = d_ws.ptr;
  a.workspace_bytes = d_ws.count;
  a.dtype = dtype;
  attention(a, nullptr);
  SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());

  // Reference: keys of token (slot, j) for j ≤ position are the tokens of that sequence.
  std::vector<int64_t> seq_start(seqs.size());
  std::vector<int32_t> slot_to_seq(slots, -1);
  for (size_t s = 0, t = 0; s < seqs.size(); t += seqs[s].length, ++s) {
    seq_start[s] = int64_t(t);
    slot_to_seq[seqs[s].slot] = int32_t(s);
  }
  std::vector<float> ref(nq * qw);
  const int32_t group = heads / kv_heads;
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t base = seq_start[slot_to_seq[q_slot[i]]];
    const int32_t p = q_pos[i];
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t g = h / group;
      const float* q = &qkv.f[queries[i] * row + int64_t(h) * head_dim];
      std::vector<double> s(p + 1);
      double mx = -INFINITY;
      for (int32_t j = 0; j <= p; ++j) {
        const float* k = &qkv.f[(base + j) * row + qw + int64_t(g) * head_dim];
        double dot = 0;
        for (int32_t d = 0; d < head_dim; ++d) dot += double(q[d]) * k[d];
        s[j] = dot * a.scale;
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int32_t d = 0; d < head_dim; ++d) {
        double o = 0;
        for (int32_t j = 0; j <= p; ++j) o += s[j] * qkv.f[(base + j) * row + qw + kw + int64_t(g) * head_dim + d];
        ref[i * qw + int64_t(h) * head_dim + d] = float(o / z);
      }
    }
  }
  expect_close(d_out.download(), ref, dtype, tolerance(dtype),
               std::string(decode ? "decode" : "prefill") + " hd" + std::to_string(head_dim));

  // The cache holds exactly the written rows.
  const std::vector<uint16_t> k_cache = d_k.download();
  for (int64_t t = 0; t < tokens; t += 7) {
    for (int32_t g = 0; g < kv_heads; ++g) {
      const size_t at = ((size_t(slot[t]) * kv_heads + g) * max_seq + pos[t]) * head_dim;
      for (int32_t d = 0; d < head_dim; ++d)
        ASSERT_EQ(k_cache[at + d], qkv.bits[t * row + qw + int64_t(g) * head_dim + d]) << "cache k, token " << t;
    }
  }
}

using AttentionCase = std::tuple<int32_t, std::pair<int32_t, int32_t>, DType>;  // head_dim, (heads, kv_heads)
class AttentionTest : public ::testing::TestWithParam<AttentionCase> {};

std::string attention_name(const ::testing::TestParamInfo<AttentionCase>& info) {
  const auto& [hd, h, dtype] = info.param;
  return "hd" + std::to_string(hd) + "_h" + std::to_string(h.first) + "_kv" + std::to_string(h.second) + "_" +
         short_name(dtype);
}

TEST_P(AttentionTest, PrefillOfPackedSequences) {
  SKIP_WITHOUT_GPU();
  const auto [hd, h, dtype] = GetParam();
  run_attention_case(dtype, h.first, h.second, hd, {{2, 1}, {0, 37}, {3, 130}}, /*decode=*/false, 160,
                     uint32_t(hd * 31 + h.first));
}

TEST_P(AttentionTest, DecodeAtManyLengths) {
  SKIP_WITHOUT_GPU();
  const auto [hd, h, dtype] = GetParam();
  // Lengths around chunk boundaries (256) and up to 2000: the key range is split and combined.
  run_attention_case(dtype, h.first, h.second, hd,
                     {{0, 1}, {5, 2}, {2, 63}, {7, 257}, {1, 512}, {4, 1000}, {6, 1537}, {3, 2000}},
                     /*decode=*/true, 2048, uint32_t(hd * 17 + h.second));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Combine(::testing::Values(64, 128),
                       ::testing::Values(std::make_pair(8, 2), std::make_pair(4, 4)),
                       ::testing::Values(DType::kFloat16, DType::kBFloat16)),
    attention_name);

// Head sizes that are not a power of two, and the smallest and largest supported.
INSTANTIATE_TEST_SUITE_P(
    OtherHeadDims, AttentionTest,
    ::testing::Combine(::testing::Values(8, 80, 96, 256), ::testing::Values(std::make_pair(6, 3)),
                       ::testing::Values(DType::kFloat16)),
    attention_name);

TEST(AttentionDecode, OneSequenceLongContext) {
  SKIP_WITHOUT_GPU();
  // Batch 1, 32 heads: the split count is capped by the target block count, not the key range.
  run_attention_case(DType::kBFloat16, 32, 8, 128, {{0, 4000}}, /*decode=*/true, 4096, 99);
}

TEST(AttentionDecode, MergesChunksInClusters) {
  SKIP_WITHOUT_GPU();
  // Launches of 2 to 8 key chunks a (token, head) merge them inside a thread-block cluster on
  // compute capability 9.0: a decode step of Llama-2-7B's attention at batch 1 (3 chunks) and 16
  // (2), and 8 chunks with tokens whose keys fill 1 to 8 of them (the other blocks of their
  // clusters have nothing to do).
  struct Case {
    int32_t heads, kv_heads, head_dim;
    std::vector<Sequence> seqs;
    int32_t max_seq;
    DType dtype;
  };
  std::vector<Sequence> sixteen;
  for (int32_t s = 0; s < 16; ++s) sixteen.push_back({s, 100 + 5 * s});
  const std::vector<Case> cases = {
      {32, 32, 128, {{0, 190}}, 256, DType::kFloat16},
      {32, 8, 128, sixteen, 256, DType::kBFloat16},
      {8, 2, 64, {{0, 1}, {5, 2}, {2, 63}, {7, 65}, {1, 129}, {4, 200}, {6, 257}, {3, 500}}, 512, DType::kFloat16},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    int32_t max_positions = 0;
    for (const Sequence& s : c.seqs) max_positions = std::max(max_positions, s.length);
    EXPECT_EQ(attention_merges_in_clusters(int64_t(c.seqs.size()), c.heads, max_positions),
              current_device().cc_major >= 9 && !detail::switched_off("SPARSELLM_ATTENTION_CLUSTERS"))
        << "case " << i;
    run_attention_case(c.dtype, c.heads, c.kv_heads, c.head_dim, c.seqs, /*decode=*/true, c.max_seq,
                       uint32_t(300 + i));
  }
}

TEST(AttentionDecode, CallsOfEveryShapeShareOneWorkspace) {
  SKIP_WITHOUT_GPU();
  // A model's forward calls of every token count and key range share one workspace. Whatever
  // one call leaves there (records of other random inputs, in another layout) must not change
  // the next call's result: each case is checked against its own reference.
  const std::vector<std::vector<Sequence>> batches = {
      {{0, 1}, {5, 2}, {2, 63}, {7, 257}, {1, 512}, {4, 1000}, {6, 1537}, {3, 2000}},
      {{0, 700}},
      {{1, 129}, {0, 1999}, {2, 65}},
  };
  size_t bytes = 0;
  for (int64_t t = 1; t <= 8; ++t) bytes = std::max(bytes, attention_workspace_bytes(t, 8, 64, 2048));
  DeviceBuffer<char> ws(bytes);
  for (uint32_t round = 0; round < 2; ++round)
    for (size_t b = 0; b < batches.size(); ++b)
      run_attention_case(DType::kFloat16, 8, 2, 64, batches[b], /*decode=*/true, 2048, uint32_t(1000 + 7 * round + b),
                         &ws);
}

TEST(AttentionDecode, ATokenOutsideTheCacheGetsZeros) {
  SKIP_WITHOUT_GPU();
  // Two decode tokens over a split key range: slot 0 at position 300, and one whose slot lies
  // outside the cache. The second's output is zero whatever the workspace held; the first's is finite.
  const int32_t heads = 4, head_dim = 64, max_seq = 512, slots = 1;
  std::mt19937 rng(5);
  const size_t cache_elems = size_t(slots) * heads * max_seq * head_dim;
  Tensor q(2 * heads * head_dim, DType::kFloat16, rng), kv(cache_elems, DType::kFloat16, rng);
  DeviceBuffer<uint16_t> d_q(q.bits), d_k(kv.bits), d_v(kv.bits), d_out(q.bits.size());
  DeviceBuffer<int32_t> d_slot(std::vector<int32_t>{0, slots}), d_pos(std::vector<int32_t>{300, 300});
  const size_t ws_bytes = attention_workspace_bytes(2, heads, head_dim, max_seq);
  ASSERT_GT(ws_bytes, 0u);
  DeviceBuffer<char> ws(ws_bytes);
  ws.poison();
  AttentionParams a;
  a.q = d_q.ptr;
  a.cache = KvCacheView{d_k.ptr, d_v.ptr, slots, heads, max_seq, head_dim};
  a.place = TokenPlacement{d_slot.ptr, d_pos.ptr};
  a.out = d_out.ptr;
  a.tokens = 2;
  a.heads = heads;
  a.max_positions = max_seq;
  a.scale = 0.125f;
  a.workspace = ws.ptr;
  a.workspace_bytes = ws_bytes;
  for (int call = 0; call < 2; ++call) {
    d_out.poison();
    attention(a, nullptr);
    SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
    const std::vector<uint16_t> out = d_out.download();
    const size_t width = size_t(heads) * head_dim;
    for (size_t i = 0; i < width; ++i) ASSERT_TRUE(std::isfinite(from_bits(out[i], DType::kFloat16))) << i;
    for (size_t i = width; i < 2 * width; ++i) ASSERT_EQ(out[i], 0u) << i;
  }
}

TEST(AttentionValidation, RejectsBadArguments) {
  int dummy;
  AttentionParams a;
  a.q = a.out = &dummy;
  a.cache = KvCacheView{&dummy, &dummy, 1, 2, 64, 64};
  alignas(16) static char cache[16];
  a.cache.k = a.cache.v = cache;
  a.place = TokenPlacement{&dummy, &dummy};
  a.tokens = 1;
  a.heads = 3;  // not a multiple of kv_heads
  a.max_positions = 10;
  a.scale = 0.125f;
  EXPECT_THROW(attention(a, nullptr), InvalidArgument);
  a.heads = 4;
  a.cache.head_dim = 100;  // not a multiple of 8
  EXPECT_THROW(attention(a, nullptr), InvalidArgument);
  a.cache.head_dim = 64;
  a.max_positions = 65;  // > max_seq
  EXPECT_THROW(attention(a, nullptr), InvalidArgument);
  a.max_positions = 64;
  a.cache.max_seq = 4096;
  a.max_positions = 4096;  // splits: needs a workspace
  ASSERT_GT(attention_workspace_bytes(1, 4, 64, 4096), 0u);
  EXPECT_THROW(attention(a, nullptr), InvalidArgument);
  EXPECT_EQ(attention_workspace_bytes(4096, 32, 128, 2048), 0u);  // enough rows: no split
}

// ---------------------------------------------------------------------------------------------
// Sampling

TEST(Philox, KnownAnswers) {
  // Random123's kat_vectors for philox4x32-10.
  const Philox4x32 a = philox4x32_10(Philox4x32{{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(a.v[0], 0x6627e8d5u);
  EXPECT_EQ(a.v[1], 0xe169c58du);
  EXPECT_EQ(a.v[2], 0xbc57ac4cu);
  EXPECT_EQ(a.v[3], 0x9b00dbd8u);
  const Philox4x32 b = philox4x32_10(Philox4x32{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u,
                                     0x299f31d0u);
  EXPECT_EQ(b.v[0], 0xd16cfe09u);
  EXPECT_EQ(b.v[1], 0x94fdccebu);
  EXPECT_EQ(b.v[2], 0x5001e420u);
  EXPECT_EQ(b.v[3], 0x24126ea1u);
}

struct SamplerRun {
  DType dtype;
  int64_t batch, vocab, stride;
  std::vector<uint16_t> logits;  // [batch, stride]
  std::vector<float> temperature, top_p;
  std::vector<int32_t> top_k;
  std::vector<uint64_t> seed;

  // Next tokens of steps first … first + count − 1, one launch each on the same buffers.
  std::vector<std::vector<int32_t>> run_steps(int32_t first, int32_t count) const {
    DeviceBuffer<uint16_t> d_logits(logits);
    DeviceBuffer<float> d_t(temperature), d_p(top_p);
    DeviceBuffer<int32_t> d_k(top_k), d_step(1), d_next(batch);
    DeviceBuffer<uint64_t> d_seed(seed);
    SamplingParams p;
    p.logits = d_logits.ptr;
    p.batch = batch;
    p.vocab = vocab;
    p.logits_stride = stride;
    p.temperature = d_t.ptr;
    p.top_k = d_k.ptr;
    p.top_p = d_p.ptr;
    p.seed = d_seed.ptr;
    p.step = d_step.ptr;
    p.next_token = d_next.ptr;
    p.dtype = dtype;
    std::vector<std::vector<int32_t>> out;
    for (int32_t step = first; step < first + count; ++step) {
      d_step.upload(std::vector<int32_t>{step});
      SPARSELLM_CHECK_CUDA(cudaMemset(d_next.ptr, 0xFF, batch * sizeof(int32_t)));
      sample_tokens(p, nullptr);
      out.push_back(d_next.download());
    }
    return out;
  }
  std::vector<int32_t> run(int32_t step) const { return run_steps(step, 1)[0]; }
};

// Rows of distinct random logits (no ties unless a test makes them).
SamplerRun make_sampler(DType dtype, int64_t batch, int64_t vocab, int64_t stride, uint32_t seed, float sd = 3.f) {
  SamplerRun s{dtype, batch, vocab, stride, std::vector<uint16_t>(batch * stride, to_bits(-1e4f, dtype)),
               std::vector<float>(batch, 1.f), std::vector<float>(batch, 1.f), std::vector<int32_t>(batch, 0),
               std::vector<uint64_t>(batch)};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, sd);
  for (int64_t b = 0; b < batch; ++b) {
    std::set<uint16_t> used;
    for (int64_t v = 0; v < vocab; ++v) {
      uint16_t bits;
      do bits = to_bits(normal(rng), dtype);
      while (vocab <= 4096 && !used.insert(bits).second);
      s.logits[b * stride + v] = bits;
    }
    s.seed[b] = 0x1234567ull * uint64_t(b + 1) + seed;
  }
  return s;
}

std::vector<float> row_of(const SamplerRun& s, int64_t b) {
  std::vector<float> r(s.vocab);
  for (int64_t v = 0; v < s.vocab; ++v) r[v] = from_bits(s.logits[b * s.stride + v], s.dtype);
  return r;
}

// Probabilities by the header's definition (ties kept at both thresholds), in double.
std::vector<double> reference_probs(const std::vector<float>& x, float temperature, int32_t top_k, float top_p) {
  const int64_t n = int64_t(x.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  float floor = -INFINITY;
  if (top_k > 0 && top_k < n) floor = x[order[top_k - 1]];
  const double mx = x[order[0]];
  std::vector<double> p(n, 0.0);
  double z = 0;
  for (int64_t v = 0; v < n; ++v)
    if (x[v] >= floor) z += (p[v] = std::exp((x[v] - mx) / temperature));
  if (top_p < 1.f) {
    double cum = 0;
    for (int64_t i = 0; i < n; ++i) {
      cum += p[order[i]];
      if (cum >= top_p * z) {
        floor = std::max(floor, x[order[i]]);
        break;
      }
    }
    z = 0;
    for (int64_t v = 0; v < n; ++v) {
      if (x[v] < floor) p[v] = 0;
      z += p[v];
    }
  }
  for (auto& e : p) e /= z;
  return p;
}

int64_t argmax_lowest(const std::vector<float>& x) {
  return std::max_element(x.begin(), x.end()) - x.begin();  // first of equal maxima
}

class SamplingDtype : public ::testing::TestWithParam<DType> {};

TEST_P(SamplingDtype, GreedyIsArgmaxLowestIndexOnTies) {
  SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  for (const auto& [vocab, stride] : {std::pair<int64_t, int64_t>{16, 16}, {50257, 50261}, {32000, 32008},
                                      {256000, 256000}}) {
    SamplerRun s = make_sampler(dtype, 5, vocab, stride, uint32_t(vocab));
    for (auto& t : s.temperature) t = 0.f;
    // Row 1: a tie for the maximum at two indices.
    const std::vector<float> r1 = row_of(s, 1);
    const uint16_t top = to_bits(*std::max_element(r1.begin(), r1.end()) + 1.f, dtype);
    s.logits[1 * stride + vocab - 1] = top;
    s.logits[1 * stride + vocab / 3] = top;
    // Row 2: temperature > 0 with top_k = 1 is greedy too.
    s.temperature[2] = 0.7f;
    s.top_k[2] = 1;
    const std::vector<int32_t> got = s.run(3);
    for (int64_t b = 0; b < s.batch; ++b) EXPECT_EQ(got[b], argmax_lowest(row_of(s, b))) << "vocab " << vocab << " row " << b;
    EXPECT_EQ(got[1], vocab / 3);
  }
}

TEST_P(SamplingDtype, TopKAndTopPKeepOnlyAllowedTokens) {
  SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  for (const auto& [vocab, stride] : {std::pair<int64_t, int64_t>{1000, 1000}, {50257, 50257}, {256000, 256000}}) {
    SamplerRun s = make_sampler(dtype, 64, vocab, stride, uint32_t(vocab + 1), 2.f);
    for (int64_t b = 0; b < s.batch; ++b) {
      switch (b % 4) {
        case 0: s.top_k[b] = 5; s.temperature[b] = 3.f; break;            // flat: top-5 all likely
        case 1: s.top_p[b] = 1e-4f; s.temperature[b] = 1.f; break;        // nucleus of one token
        case 2: s.top_k[b] = 50; s.top_p[b] = 0.9f; s.temperature[b] = 2.f; break;
        default: s.top_p[b] = 0.5f; s.temperature[b] = 0.8f; break;
      }
    }
    for (int32_t step = 0; step < 4; ++step) {
      const std::vector<int32_t> got = s.run(step);
      for (int64_t b = 0; b < s.batch; ++b) {
        const std::vector<float> x = row_of(s, b);
        ASSERT_GE(got[b], 0);
        ASSERT_LT(got[b], vocab);
        const std::vector<double> p = reference_probs(x, s.temperature[b], s.top_k[b], s.top_p[b]);
        EXPECT_GT(p[got[b]], 0.0) << "vocab " << vocab << " row " << b << " drew " << got[b] << " outside the kept set";
        if (b % 4 == 1) {  // the largest logit (several tokens may share it)
          EXPECT_EQ(x[got[b]], x[argmax_lowest(x)]) << "vocab " << vocab << " row " << b;
        }
      }
    }
  }
}

TEST_P(SamplingDtype, SameSeedAndStepSameToken) {
  SKIP_WITHOUT_GPU();
  SamplerRun s = make_sampler(GetParam(), 32, 4099, 4099, 7, 1.f);
  const std::vector<int32_t> a = s.run(11), b = s.run(11), c = s.run(12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);  // 32 rows of a flat distribution: all equal by chance is negligible
}

// 4000 draws of a 16-token vocabulary per setting (40 seeds × 100 steps);
// Pearson's χ² against the reference probabilities (cells with expected count
// < 5 pooled). 15 degrees of freedom at most: the 99.99% quantile is ≈ 44; the
// draws are deterministic, so the test cannot flake.
TEST_P(SamplingDtype, StepsFollowTheDistribution) {
  SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  constexpr int kSettings = 4, kSeeds = 40, kSteps = 100, kVocab = 16;
  const float temperature[kSettings] = {1.f, 0.7f, 1.f, 1.5f};
  const int32_t top_k[kSettings] = {0, 5, 0, 8};
  const float top_p[kSettings] = {1.f, 1.f, 0.6f, 0.9f};
  const SamplerRun one = make_sampler(dtype, 1, kVocab, kVocab, 2024, 1.f);
  SamplerRun s = make_sampler(dtype, kSettings * kSeeds, kVocab, kVocab, 1, 1.f);
  for (int64_t b = 0; b < s.batch; ++b) {  // row b: setting b % kSettings, the same logits everywhere
    std::copy_n(one.logits.begin(), kVocab, s.logits.begin() + b * kVocab);
    s.temperature[b] = temperature[b % kSettings];
    s.top_k[b] = top_k[b % kSettings];
    s.top_p[b] = top_p[b % kSettings];
    s.seed[b] = 1000003ull * uint64_t(b / kSettings) + 17;
  }
  std::vector<std::vector<int>> counts(kSettings, std::vector<int>(kVocab, 0));
  for (const std::vector<int32_t>& got : s.run_steps(0, kSteps)) {
    for (int64_t b = 0; b < s.batch; ++b) {
      ASSERT_GE(got[b], 0);
      ASSERT_LT(got[b], kVocab);
      ++counts[b % kSettings][got[b]];
    }
  }
  const double draws = kSeeds * kSteps;
  for (int c = 0; c < kSettings; ++c) {
    const std::vector<double> p = reference_probs(row_of(one, 0), temperature[c], top_k[c], top_p[c]);
    double chi2 = 0, pooled_obs = 0, pooled_exp = 0;
    int cells = 0;
    for (int v = 0; v < kVocab; ++v) {
      const double e = p[v] * draws;
      if (p[v] == 0) {
        EXPECT_EQ(counts[c][v], 0) << "setting " << c << " drew excluded token " << v;
      } else if (e < 5) {
        pooled_obs += counts[c][v];
        pooled_exp += e;
      } else {
        chi2 += (counts[c][v] - e) * (counts[c][v] - e) / e;
        ++cells;
      }
    }
    if (pooled_exp > 0) {
      chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
      ++cells;
    }
    EXPECT_LT(chi2, 44.0) << "setting " << c << ": chi-square " << chi2 << " over " << cells << " cells";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SamplingDtype, ::testing::Values(DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) { return short_name(info.param); });

TEST(SamplingValidation, RejectsBadArguments) {
  SamplingParams p;
  p.batch = 1;
  p.vocab = 0;
  EXPECT_THROW(sample_tokens(p, nullptr), InvalidArgument);
  p.vocab = 10;
  EXPECT_THROW(sample_tokens(p, nullptr), InvalidArgument);  // null pointers
}

}  // namespace
}  // namespace sparsellm
