// The one-shot all-reduce kernel (protocol and its argument in peer_all_reduce.h).
//
// Grid: kBlocks blocks of kThreads; block b owns slice b of the message: the
// 16-byte vectors [nv·b/kBlocks, nv·(b+1)/kBlocks) of nv = count / 8, and the
// last block the count mod 8 elements after them. A rank's region holds
//   buffers  [2][kMaxBytes]              (parity e mod 2; this rank's copy of x)
//   flags    [kMaxRanks][kBlocks] u32    (flags[q][b]: the last epoch rank q signalled for slice b)
// Threads 0..W−1 of a block each signal one rank and wait for one rank's
// signal: a system-scope release store into the peer's flags after the block's
// copy (bar.sync, then a system fence), and a system-scope acquire load
// spinning on this rank's own flags, then bar.sync before the block reads.
// Peers' buffers are read with ld.global.cg (L2, never a stale L1 line of an
// earlier call at the same parity). The sum is fp32 in rank order 0..W−1, so
// every rank writes the same bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "comm/peer_all_reduce.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

constexpr int kThreads = 512;
constexpr int kVector = 8;                  // elements of one 16-byte access
constexpr uint32_t kPollsPerCheck = 1024;   // flag polls between timeout / cancel checks
constexpr int kBlocks = PeerAllReduce::kBlocks;

__device__ __forceinline__ uint32_t load_acquire_system(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release_system(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t* flags_of(char* region) {
  return reinterpret_cast<uint32_t*>(region + 2 * PeerAllReduce::kMaxBytes);
}

template <typename T>
__device__ __forceinline__ void accumulate(float (&acc)[kVector], uint4 v) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < kVector; ++i) acc[i] += kernels::to_float(h[i]);
}

template <typename T>
__device__ __forceinline__ uint4 pack(const float (&acc)[kVector]) {
  uint4 v;
  T* h = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < kVector; ++i) h[i] = kernels::from_float<T>(acc[i]);
  return v;
}

// data[8v .. 8v + 8) as one vector; `aligned`: data is 16-byte aligned (else element by element).
template <typename T>
__device__ __forceinline__ uint4 load_vector(const T* data, int64_t v, bool aligned) {
  if (aligned) return reinterpret_cast<const uint4*>(data)[v];
  uint4 out;
  T* h = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int i = 0; i < kVector; ++i) h[i] = data[v * kVector + i];
  return out;
}

template <typename T>
__device__ __forceinline__ void store_vector(T* data, int64_t v, uint4 value, bool aligned) {
  if (aligned) {
    reinterpret_cast<uint4*>(data)[v] = value;
    return;
  }
  const T* h = reinterpret_cast<const T*>(&value);
#pragma unroll
  for (int i = 0; i < kVector; ++i) data[v * kVector + i] = h[i];
}

// p.epochs[kBlocks] is the give-up marker (device memory: read by every call, cheaply).
template <typename T>
__global__ void __launch_bounds__(kThreads) peer_all_reduce_kernel(const __grid_constant__ PeerAllReduce::Params p) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  __shared__ uint32_t epoch;
  __shared__ int gave_up;
  const int b = blockIdx.x;
  if (threadIdx.x == 0) {
    epoch = p.epochs[b] + 1;
    gave_up = p.epochs[kBlocks] != 0;  // an earlier call gave up: the communicator has failed
  }
  __syncthreads();
  if (gave_up) return;
  const uint32_t e = epoch;
  const size_t parity = size_t(e & 1) * PeerAllReduce::kMaxBytes;
  T* data = static_cast<T*>(p.data);                              // [count]
  const bool aligned = (reinterpret_cast<uintptr_t>(data) & 15) == 0;  // the slices never depend on it
  const int64_t nv = p.count / kVector;
  const int64_t v0 = nv * b / kBlocks, v1 = nv * (b + 1) / kBlocks;
  const int64_t tail = b == kBlocks - 1 ? nv * kVector : p.count;  // first element of the tail (last block only)

  // 1. This rank's slice into its shared buffer.
  T* mine = reinterpret_cast<T*>(p.regions[p.rank] + parity);  // [count]
  for (int64_t v = v0 + threadIdx.x; v < v1; v += kThreads)
    reinterpret_cast<uint4*>(mine)[v] = load_vector(data, v, aligned);
  for (int64_t i = tail + threadIdx.x; i < p.count; i += kThreads) mine[i] = data[i];
  __syncthreads();

  // 2. Signal slice b of epoch e to rank q; 3. wait for rank q's signal.
  if (threadIdx.x < p.world) {
    const int q = threadIdx.x;
    __threadfence_system();
    store_release_system(flags_of(p.regions[q]) + p.rank * kBlocks + b, e);
    const uint32_t* flag = flags_of(p.regions[p.rank]) + q * kBlocks + b;
    const uint64_t start = global_timer_ns();
    for (uint32_t polls = 1; int32_t(load_acquire_system(flag) - e) < 0; ++polls) {
      if (polls % kPollsPerCheck != 0) continue;
      const bool cancelled = p.control[1] != 0;
      if (cancelled || global_timer_ns() - start > p.timeout_ns) {
        if (!cancelled) p.control[0] = q + 1;  // host-mapped: Communicator::check_async reports it
        p.epochs[kBlocks] = 1;
        __threadfence_system();
        gave_up = 1;
        break;
      }
    }
  }
  __syncthreads();
  if (gave_up) return;

  // 4. The sum over ranks, in rank order.
  for (int64_t v = v0 + threadIdx.x; v < v1; v += kThreads) {
    float acc[kVector] = {};
    for (int q = 0; q < p.world; ++q)
      accumulate<T>(acc, __ldcg(reinterpret_cast<const uint4*>(p.regions[q] + parity) + v));
    store_vector(data, v, pack<T>(acc), aligned);
  }
  for (int64_t i = tail + threadIdx.x; i < p.count; i += kThreads) {
    float acc = 0.0f;
    for (int q = 0; q < p.world; ++q) {
      const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p.regions[q] + parity) + i);
      acc += kernels::to_float(*reinterpret_cast<const T*>(&bits));
    }
    data[i] = kernels::from_float<T>(acc);
  }
  if (threadIdx.x == 0) p.epochs[b] = e;
}

}  // namespace

void launch_peer_all_reduce(const PeerAllReduce::Params& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::kFloat16)
    kernels::launch_chained("peer_all_reduce_kernel", peer_all_reduce_kernel<__half>, kBlocks, kThreads, 0, stream, p);
  else
    kernels::launch_chained("peer_all_reduce_kernel", peer_all_reduce_kernel<__nv_bfloat16>, kBlocks, kThreads, 0,
                            stream, p);
}

}  // namespace sparsellm
