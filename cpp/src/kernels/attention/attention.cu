// Causal attention against the KV cache (attention.h), flash-decoding style:
//
//   for token t (slot s, position p), head h, kv head g = h / (heads / kv_heads):
//     out[t, h, :] = Σ_{j ≤ p} softmax_j(scale · q · K[s, g, j, :]) · V[s, g, j, :]
//
// Split: the key range [0, max_positions) is cut into `splits` chunks of
// `chunk` keys (attention_split below: a pure function of tokens, heads and
// max_positions, so the launch shape never depends on positions in device
// memory). Pass 1 runs one block of 128 threads per (token, head, chunk):
//
//   lanes:   G = 2^⌈log2(head_dim / 8)⌉ lanes share one key; lane l holds q[8l, 8l+8)
//            (pre-scaled by scale · log2 e) and reads K and V rows 16 bytes at a time
//   groups:  128 / G groups per block; group i takes keys begin + u · groups + i of
//            each step of groups · kKeysPerGroup keys (a warp reads consecutive rows),
//            kKeysPerGroup K and V vectors in flight per lane
//   online softmax per group in fp32 (base 2): m, l = Σ 2^(s − m), acc = Σ 2^(s − m) · v
//   merge:   the groups' (m, l, acc) through shared memory into the block's
//            M = max m, L = Σ l · 2^(m − M), O = Σ acc · 2^(m − M)
//
// With one split the block writes out = O / L directly. With several, the
// chunks' records (O unnormalized, M, L; fp32) are merged over the chunks that
// hold keys of the token, ⌈(p + 1) / chunk⌉ of them, the same way:
//   clusters (sm_90, 2 ≤ splits ≤ kMaxClusterSplits): a (token, head)'s chunks
//            are one thread-block cluster; each block stores its record into
//            block 0's shared memory, and after the cluster's barrier block 0
//            merges and writes out. No second kernel, no global round trip.
//   else     each block writes its record to the workspace, and pass 2 (one
//            block per (token, head)) merges them.
// A chunk beyond a token's position has nothing to do. A token whose slot or
// position lies outside the cache gets a zero output; nothing outside the
// cache is read.
//
// Chained launch (kernels/launch.h): where the launch's cached keys and values
// take at most a quarter of L2 (a decode step at small batches), a block hints
// its chunk's rows into L2 before its wait, placed by the slot and position it
// reads then (relaxed loads: the kernel before may still be writing them, so
// they steer the prefetch only; the values used are read after the wait). The
// keys before the token's own were written by earlier steps. A prefetch never
// changes what is read, only how soon; over larger caches it would evict its
// own lines before their use (docs/kernel-notes.md, "The attention's chunks
// merged in a cluster").
//
// Workspace (splits > 1, no clusters): o [tokens, heads, splits, head_dim]
// fp32, then ml [tokens, heads, splits, 2] fp32.
#include "kernels/attention/attention.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kThreads = 128;
constexpr int kKeysPerGroup = 4;
constexpr int kMinChunk = 64;         // keys per split at least (32 KiB of K and V at head_dim 128)
constexpr int kChunkAlign = 64;
constexpr int64_t kTargetBlocks = 1024;  // enough blocks of pass 1 to fill a large GPU several times
constexpr int kMaxSplits = 64;
constexpr int kMaxClusterSplits = 8;  // the portable cluster size
constexpr float kLog2e = 1.4426950408889634f;

struct Split {
  int splits, chunk;
};

// splits = min(⌈max_positions / kMinChunk⌉, ⌈kTargetBlocks / (tokens · heads)⌉, kMaxSplits):
// split only while the (token, head) rows alone leave the GPU idle, and keep
// every chunk long enough to stream. The workspace then stays below
// (kTargetBlocks + tokens · heads) chunk records.
Split attention_split(int64_t tokens, int32_t heads, int32_t max_positions) {
  const int64_t rows = std::max<int64_t>(1, tokens * heads);
  int64_t splits = std::min<int64_t>({ceil_div(max_positions, kMinChunk), ceil_div(kTargetBlocks, rows), kMaxSplits});
  splits = std::max<int64_t>(splits, 1);
  const int64_t chunk = ceil_div(ceil_div(max_positions, splits), kChunkAlign) * kChunkAlign;
  return {int(ceil_div(max_positions, chunk)), int(chunk)};
}

struct AttentionArgs {
  const void* q;            // [tokens, heads · head_dim], row stride q_stride
  const void* k;            // [slots, kv_heads, max_seq, head_dim]
  const void* v;            // [slots, kv_heads, max_seq, head_dim]
  void* out;                // [tokens, heads · head_dim]
  const int32_t* slot;      // [tokens]
  const int32_t* position;  // [tokens]
  float* ws_o;              // [tokens, heads, splits, head_dim]
  float* ws_ml;             // [tokens, heads, splits, 2]
  int64_t q_stride;
  int32_t heads, kv_heads, head_dim, slots, max_seq, splits, chunk;
  float scale_log2;         // scale · log2 e
  bool clustered;           // one cluster per (token, head): its chunks merge in block 0
  bool prefetch;            // hint the chunk's keys and values into L2 before the wait
};

__device__ __forceinline__ bool placed(const AttentionArgs& a, int32_t slot, int32_t pos) {
  return kv_cache_holds(slot, pos, a.slots, a.max_seq);
}

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_float(e[i]);
}

// Thread-block clusters (sm_90): the cluster's barrier in two halves, and
// stores into another block's shared memory.
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
// The address of `p`, in this block's shared memory, in block `rank`'s.
__device__ __forceinline__ uint32_t cluster_address(const void* p, uint32_t rank) {
  const uint32_t local = uint32_t(__cvta_generic_to_shared(p));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
__device__ __forceinline__ void st_cluster(uint32_t address, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(address), "f"(v) : "memory");
}
#endif

__device__ __forceinline__ int32_t load_relaxed(const int32_t* p) {
  int32_t v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Before the wait: chunk c's cached keys and values of token t (kv head g)
// into L2, placed by a relaxed read of its slot and position (a hint only).
template <typename T>
__device__ __forceinline__ void prefetch_chunk(const AttentionArgs& a, int64_t t, int g, int c) {
  const int32_t slot = load_relaxed(a.slot + t), pos = load_relaxed(a.position + t);
  if (!placed(a, slot, pos)) return;
  const int begin = c * a.chunk, end = min(begin + a.chunk, pos + 1);
  if (begin >= end) return;
  const int64_t first = ((int64_t(slot) * a.kv_heads + g) * a.max_seq + begin) * a.head_dim;
  const char* k = reinterpret_cast<const char*>(static_cast<const T*>(a.k) + first);
  const char* v = reinterpret_cast<const char*>(static_cast<const T*>(a.v) + first);
  const int64_t bytes = int64_t(end - begin) * a.head_dim * int64_t(sizeof(T));
  for (int64_t at = int64_t(threadIdx.x) * 128; at < bytes; at += 128 * kThreads) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(k + at));
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(v + at));
  }
}

// out[0 .. head_dim) = Σ_c o[c] · 2^(M_c − M) / Σ_c L_c · 2^(M_c − M) over
// `chunks` records: (M_c, L_c) at ml[2 c], o[c] at o + c · o_stride. Every
// thread of the block calls it; s_w holds at least `chunks` floats.
template <typename T>
__device__ void merge_chunks(const float* ml, const float* o, int64_t o_stride, int chunks, int head_dim, T* out,
                             float* s_w) {
  float big = -INFINITY;
  for (int c = 0; c < chunks; ++c) big = fmaxf(big, ml[2 * c]);
  if (threadIdx.x < chunks) s_w[threadIdx.x] = exp2f(ml[2 * threadIdx.x] - big);
  __syncthreads();
  float total = 0.f;
  for (int c = 0; c < chunks; ++c) total += ml[2 * c + 1] * s_w[c];
  const float inv = 1.f / total;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.f;
    for (int c = 0; c < chunks; ++c) v += o[c * o_stride + d] * s_w[c];
    out[d] = from_float<T>(v * inv);
  }
}

template <typename T>
__device__ void write_zeros(const AttentionArgs& a, int64_t t, int h) {
  T* out = static_cast<T*>(a.out) + (t * a.heads + h) * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) out[d] = from_float<T>(0.f);
}

// Pass 1: one block per (token, head, chunk); blockIdx.x = (t · heads + h) · splits + c
// (with clusters, cluster rank c).
template <typename T, int G>
__global__ void __launch_bounds__(kThreads) attention_chunk_kernel(AttentionArgs a) {
  constexpr int kGroups = kThreads / G;
  constexpr int kStep = kGroups * kKeysPerGroup;  // keys per step of the block
  __shared__ float s_acc[kGroups][G * 8];
  __shared__ float s_m[kGroups], s_l[kGroups], s_w[kGroups > kMaxClusterSplits ? kGroups : kMaxClusterSplits];

  const int c = int(blockIdx.x % unsigned(a.splits));
  const int64_t th = blockIdx.x / unsigned(a.splits);
  const int h = int(th % a.heads);
  const int64_t t = th / a.heads;
  const int g = h / (a.heads / a.kv_heads);
  kernels::allow_dependent_launch();  // chained launch (kernels/launch.h)
  if (a.prefetch) prefetch_chunk<T>(a, t, g, c);
  kernels::wait_for_prerequisite_grids();
  const int32_t slot = a.slot[t], pos = a.position[t];
  if (!placed(a, slot, pos)) {  // the same for every block of a cluster
    if (a.splits == 1 || (a.clustered && c == 0)) write_zeros<T>(a, t, h);
    return;
  }
#if __CUDA_ARCH__ >= 900
  if (a.clustered) cluster_arrive_relaxed();  // first half: this block has started
#endif
  const int begin = c * a.chunk;
  const int end = min(begin + a.chunk, pos + 1);
  if (begin >= end) {  // uniform over the block: no barrier is skipped by part of it
#if __CUDA_ARCH__ >= 900
    if (a.clustered) {  // no record, but the cluster's barriers count every block
      cluster_wait();
      cluster_arrive();
      cluster_wait();
    }
#endif
    return;
  }

  const int lane = threadIdx.x % G, group = threadIdx.x / G;
  const bool active = lane * 8 < a.head_dim;  // head_dim not a power of two: idle lanes add zeros

  float q[8];
  {
    const T* qp = static_cast<const T*>(a.q) + t * a.q_stride + int64_t(h) * a.head_dim + lane * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = active ? to_float(qp[i]) * a.scale_log2 : 0.f;
  }
  const int64_t head_base = ((int64_t(slot) * a.kv_heads + g) * a.max_seq) * a.head_dim + lane * 8;
  const T* kp = static_cast<const T*>(a.k) + head_base;
  const T* vp = static_cast<const T*>(a.v) + head_base;

  float m = -INFINITY, l = 0.f, acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.f;

  for (int j0 = begin; j0 < end; j0 += kStep) {
    uint4 kr[kKeysPerGroup], vr[kKeysPerGroup];
#pragma unroll
    for (int u = 0; u < kKeysPerGroup; ++u) {
      const int j = j0 + u * kGroups + group;
      if (active && j < end) {
        kr[u] = __ldg(reinterpret_cast<const uint4*>(kp + int64_t(j) * a.head_dim));
        vr[u] = __ldg(reinterpret_cast<const uint4*>(vp + int64_t(j) * a.head_dim));
      } else {
        kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[kKeysPerGroup];
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kKeysPerGroup; ++u) {
      float kf[8];
      unpack8<T>(kr[u], kf);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) dot = fmaf(q[i], kf[i], dot);
      dot = warp_reduce<G>(dot, SumOp{});  // all lanes of the warp take part: the loop is block-uniform
      s[u] = j0 + u * kGroups + group < end ? dot : -INFINITY;
      m_new = fmaxf(m_new, s[u]);
    }
    if (m_new == -INFINITY) continue;  // no key of this group in this step (same for all its lanes)
    const float corr = exp2f(m - m_new);  // m = −∞ → 0
    l *= corr;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] *= corr;
#pragma unroll
    for (int u = 0; u < kKeysPerGroup; ++u) {
      const float pr = exp2f(s[u] - m_new);  // s = −∞ → 0
      l += pr;
      float vf[8];
      unpack8<T>(vr[u], vf);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = fmaf(pr, vf[i], acc[i]);
    }
    m = m_new;
  }

  // Merge the groups: M = max m, weights 2^(m − M), L = Σ l · w, O = Σ acc · w.
  if (active) {
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[group][lane * 8 + i] = acc[i];
  }
  if (lane == 0) {
    s_m[group] = m;
    s_l[group] = l;
  }
  __syncthreads();
  float big = -INFINITY;
  for (int i = 0; i < kGroups; ++i) big = fmaxf(big, s_m[i]);  // finite: the chunk holds a key
  if (threadIdx.x < kGroups) s_w[threadIdx.x] = exp2f(s_m[threadIdx.x] - big);
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < kGroups; ++i) total += s_l[i] * s_w[i];
  auto chunk_output = [&](int d) {  // O[d]
    float o = 0.f;
    for (int i = 0; i < kGroups; ++i) o += s_acc[i][d] * s_w[i];
    return o;
  };
  const int64_t row = t * a.heads + h;
  if (a.splits == 1) {
    const float inv = 1.f / total;
    T* out = static_cast<T*>(a.out) + row * a.head_dim;
    for (int d = threadIdx.x; d < a.head_dim; d += kThreads) out[d] = from_float<T>(chunk_output(d) * inv);
  } else if (!a.clustered) {
    const int64_t rec = row * a.splits + c;
    float* ws_o = a.ws_o + rec * a.head_dim;
    for (int d = threadIdx.x; d < a.head_dim; d += kThreads) ws_o[d] = chunk_output(d);
    if (threadIdx.x == 0) {
      a.ws_ml[rec * 2] = big;
      a.ws_ml[rec * 2 + 1] = total;
    }
  } else {
#if __CUDA_ARCH__ >= 900
    __shared__ float s_rec_o[kMaxClusterSplits][G * 8], s_rec_ml[kMaxClusterSplits][2];  // block 0's: the records
    cluster_wait();  // every block of the cluster has started: block 0's shared memory may be written
    const uint32_t o_at = cluster_address(&s_rec_o[c][0], 0), ml_at = cluster_address(&s_rec_ml[c][0], 0);
    for (int d = threadIdx.x; d < a.head_dim; d += kThreads) st_cluster(o_at + 4 * d, chunk_output(d));
    if (threadIdx.x == 0) {
      st_cluster(ml_at, big);
      st_cluster(ml_at + 4, total);
    }
    cluster_arrive();  // second half: the records are in block 0
    cluster_wait();
    if (c == 0) {
      const int chunks = min(a.splits, (pos + a.chunk) / a.chunk);  // ≥ 1
      merge_chunks<T>(&s_rec_ml[0][0], &s_rec_o[0][0], G * 8, chunks, a.head_dim,
                      static_cast<T*>(a.out) + row * a.head_dim, s_w);
    }
#else
    __trap();  // the host launches clusters only for code compiled for sm_90 (launch_chunks)
#endif
  }
}

// Pass 2 (splits > 1, no clusters): one block per (token, head); merges its chunks 0 … ⌈(p + 1) / chunk⌉ − 1.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_combine_kernel(AttentionArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  __shared__ float s_w[kMaxSplits];
  const int64_t row = blockIdx.x;
  const int h = int(row % a.heads);
  const int64_t t = row / a.heads;
  const int32_t slot = a.slot[t], pos = a.position[t];
  if (!placed(a, slot, pos)) {
    write_zeros<T>(a, t, h);
    return;
  }
  const int chunks = min(a.splits, (pos + a.chunk) / a.chunk);  // ≥ 1
  merge_chunks<T>(a.ws_ml + row * a.splits * 2, a.ws_o + row * a.splits * a.head_dim, a.head_dim, chunks, a.head_dim,
                  static_cast<T*>(a.out) + row * a.head_dim, s_w);
}

// Pass 1, in clusters where `clusters` allows it and the kernel's code has them (a build
// for sm_90 or later; a device of compute capability 9.0 running older PTX does not).
// Returns whether it merged the chunks (no pass 2).
template <typename T, int G>
bool launch_chunks(AttentionArgs args, int64_t blocks, bool clusters, cudaStream_t stream) {
  static const bool has_clusters = [] {
    cudaFuncAttributes f;
    SPARSELLM_CHECK_CUDA(cudaFuncGetAttributes(&f, attention_chunk_kernel<T, G>));
    return f.ptxVersion >= 90;
  }();
  args.clustered = clusters && has_clusters;
  kernels::launch_chained_in_clusters("attention_chunk_kernel", args.clustered ? unsigned(args.splits) : 1u,
                                      attention_chunk_kernel<T, G>, unsigned(blocks), kThreads, 0, stream, args);
  return args.clustered;
}

// Whether a launch of this split merges in clusters (attention_merges_in_clusters).
bool merges_in_clusters(const Split& split) {
  static const bool allowed = !detail::switched_off("SPARSELLM_ATTENTION_CLUSTERS");
  return allowed && split.splits > 1 && split.splits <= kMaxClusterSplits && current_device().cc_major >= 9;
}

}  // namespace

bool attention_merges_in_clusters(int64_t tokens, int32_t heads, int32_t max_positions) {
  return merges_in_clusters(attention_split(tokens, heads, max_positions));
}

size_t attention_workspace_bytes(int64_t tokens, int32_t heads, int32_t head_dim, int32_t max_positions) {
  SPARSELLM_CHECK_ARG(tokens >= 0 && heads > 0 && head_dim > 0 && max_positions > 0,
                      "attention_workspace_bytes: need tokens >= 0 and heads, head_dim, max_positions > 0; got ",
                      tokens, ", ", heads, ", ", head_dim, ", ", max_positions);
  const Split split = attention_split(tokens, heads, max_positions);
  if (split.splits == 1) return 0;
  return size_t(tokens) * size_t(heads) * size_t(split.splits) * (size_t(head_dim) + 2) * sizeof(float);
}

void attention(const AttentionParams& p, cudaStream_t stream) {
  const KvCacheView& c = p.cache;
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "attention: unknown dtype");
  SPARSELLM_CHECK_ARG(p.tokens >= 0, "attention: tokens must be >= 0, got ", p.tokens);
  SPARSELLM_CHECK_ARG(c.slots > 0 && c.kv_heads > 0 && c.max_seq > 0, "attention: cache needs slots, kv_heads, ",
                      "max_seq > 0; got ", c.slots, ", ", c.kv_heads, ", ", c.max_seq);
  SPARSELLM_CHECK_ARG(c.head_dim >= 8 && c.head_dim <= 256 && c.head_dim % 8 == 0,
                      "attention: head_dim must be a multiple of 8 in [8, 256], got ", c.head_dim);
  SPARSELLM_CHECK_ARG(p.heads > 0 && p.heads % c.kv_heads == 0, "attention: heads (", p.heads,
                      ") must be a positive multiple of kv_heads (", c.kv_heads, ")");
  SPARSELLM_CHECK_ARG(p.max_positions > 0 && p.max_positions <= c.max_seq, "attention: max_positions (",
                      p.max_positions, ") must lie in [1, max_seq = ", c.max_seq, "]");
  SPARSELLM_CHECK_ARG(std::isfinite(p.scale) && p.scale > 0.f, "attention: scale must be finite and > 0 (usually ",
                      "1 / sqrt(head_dim)), got ", p.scale);
  if (p.tokens == 0) return;
  SPARSELLM_CHECK_ARG(p.q != nullptr && p.out != nullptr && c.k != nullptr && c.v != nullptr,
                      "attention: q, out and the cache buffers must not be null");
  SPARSELLM_CHECK_ARG(p.place.slot != nullptr && p.place.position != nullptr,
                      "attention: place.slot and place.position must not be null");
  SPARSELLM_CHECK_ARG(aligned16(c.k) && aligned16(c.v), "attention: cache buffers must be 16-byte aligned");
  const int64_t width = int64_t(p.heads) * c.head_dim;
  const int64_t q_stride = p.q_stride == 0 ? width : p.q_stride;
  SPARSELLM_CHECK_ARG(q_stride >= width, "attention: q_stride (", q_stride, ") must be >= heads * head_dim = ", width);

  const Split split = attention_split(p.tokens, p.heads, p.max_positions);
  const size_t need = attention_workspace_bytes(p.tokens, p.heads, c.head_dim, p.max_positions);
  SPARSELLM_CHECK_ARG(p.workspace_bytes >= need && (need == 0 || p.workspace != nullptr), "attention: workspace of ",
                      p.workspace_bytes, " bytes, need ", need, " (attention_workspace_bytes)");
  SPARSELLM_CHECK_ARG(need == 0 || aligned16(p.workspace), "attention: workspace must be 16-byte aligned");
  const int64_t rows = p.tokens * p.heads;
  const int64_t blocks = rows * split.splits;
  SPARSELLM_CHECK_ARG(blocks <= INT32_MAX, "attention: tokens * heads = ", rows, " too large for one launch");

  float* ws = static_cast<float*>(p.workspace);
  AttentionArgs args{p.q, c.k, c.v, p.out, p.place.slot, p.place.position,
                           need ? ws : nullptr, need ? ws + rows * split.splits * c.head_dim : nullptr,
                           q_stride, p.heads, c.kv_heads, c.head_dim, c.slots, c.max_seq, split.splits, split.chunk,
                           p.scale * kLog2e, false, false};
  // The launch's cached keys and values, at most: prefetched where they take at most a quarter of L2.
  const int64_t cached_bytes =
      p.tokens * c.kv_heads * int64_t(p.max_positions) * c.head_dim * 2 * int64_t(dtype_size(p.dtype));
  args.prefetch = cached_bytes <= current_device().l2_bytes / 4;
  const bool clusters = merges_in_clusters(split);
  const int lanes = c.head_dim <= 8 ? 1 : c.head_dim <= 16 ? 2 : c.head_dim <= 32 ? 4 : c.head_dim <= 64 ? 8
                  : c.head_dim <= 128 ? 16 : 32;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    bool merged = false;
    switch (lanes) {
      case 1: merged = launch_chunks<T, 1>(args, blocks, clusters, stream); break;
      case 2: merged = launch_chunks<T, 2>(args, blocks, clusters, stream); break;
      case 4: merged = launch_chunks<T, 4>(args, blocks, clusters, stream); break;
      case 8: merged = launch_chunks<T, 8>(args, blocks, clusters, stream); break;
      case 16: merged = launch_chunks<T, 16>(args, blocks, clusters, stream); break;
      default: merged = launch_chunks<T, 32>(args, blocks, clusters, stream); break;
    }
    if (split.splits > 1 && !merged) {
      kernels::launch_chained("attention_combine_kernel", attention_combine_kernel<T>,
                              unsigned(rows), kThreads, 0, stream, args);
    }
  });
}

}  // namespace sparsellm
