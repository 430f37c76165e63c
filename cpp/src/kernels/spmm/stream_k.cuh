// What the SpMM kernels of every format share (sparsellm/spmm.h): the
// workspace layout, the kernel arguments of a stream-K product, the choice of
// block columns, the checks of a call and the launch.
//
//   workspace = [kCounters int arrival counters]
//               [fenceless zone: 2 · 512 × 128 × 16 fp32, zero between launches (kFencelessColumns)]
//               [fp32 partials of the other launches: passes × 2 · blocks × 128 × BN]
//   grid      = (plan blocks, column passes = ceil(N / BN))
//
// Both formats cut W into the same 128 × 64 tiles and give tile offsets in
// 32-bit words, so one plan and one workspace size serve both.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/check.h"
#include "kernels/launch.h"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/x_tensor_map.h"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"

namespace sparsellm::stream_k {

constexpr int kTileM = 128, kTileK = 64;
constexpr int kConsumerWarps = kTileM / 16;  // the warps that hold a tile row's accumulators, one per 16 rows

// Arrival counters live at the start of the workspace, at a fixed size, so that
// the fp32 partials of a call with other shapes never land on them.
constexpr int kCounters = 1 << 16;
constexpr size_t kCounterBytes = kCounters * sizeof(int);

template <typename T>
struct KernelArgs {
  CUtensorMap x_map;        // X as a TMA tensor (kernels/spmm/x_tensor_map.h), where x_tma
  const uint32_t* data;     // the encoded tiles, in the format's words
  const uint32_t* offsets;  // [tiles + 1] first word of each tile
  const StreamKBlock* plan;
  const T* x;      // [n, k]
  const T* bias;   // [m] or null
  T* y;            // [n, m]
  bool relu;       // Y = max(acc + bias, 0)
  float* slots;    // [passes][2 · blocks][kTileM · BN] partials (the fenceless zone where a launch is: see launch)
  int* counters;   // [passes][tiles_m] arrival counters, zero between launches
  int m, k, n, tiles_m, tiles_k, blocks;
  bool x_vectors;  // k % 8 == 0 and x 16-byte aligned: cp.async path
  bool x_tma;      // x_vectors on sm_90: X tiles by TMA (x_map) instead
  // Every block of the launch resident at once (reduce_row); at up to kFencelessColumns columns
  // also at most kFencelessBlocks blocks, whose slots the fenceless zone holds (launch).
  bool co_resident;
  // The norm fold (sparsellm/spmm.h: SpmmNormFold; kernels/spmm/norm_fold.cuh), at up to
  // kSpmmNormFoldMaxRows columns; null pointers where a part is not asked for.
  const T* norm_gamma;          // out: [m]
  T* norm_normed;               // out: [n, m] the updated Y ⊙ γ
  float* norm_sumsq_out;        // out: [tiles_m, n]
  const float* norm_sumsq_in;   // in: [ceil(k / kTileM), n]
  float norm_inv_k, norm_eps;   // in
};

// In a launch of blocks of up to kFencelessColumns columns, all resident at
// once, the blocks hand partials over without a fence (reduce_row_fenceless),
// through a zone of the workspace of their own that stays zero between
// launches: two 128 × kFencelessColumns fp32 slots for each of up to
// kFencelessBlocks blocks, at a fixed place, so that calls under plans of any
// size may share a workspace.
constexpr int kFencelessColumns = 16, kFencelessBlocks = 512;
constexpr size_t kFencelessZoneBytes = size_t(2) * kFencelessBlocks * kTileM * kFencelessColumns * sizeof(float);

// Columns of X one block pass covers.
inline int block_columns(int64_t n) { return n <= 8 ? 8 : n <= 16 ? 16 : n <= 32 ? 32 : n <= 64 ? 64 : 128; }

// Calls f(std::integral_constant<int, BN>{}) with BN = block_columns(n).
template <typename F>
void with_block_columns(int64_t n, F&& f) {
  switch (block_columns(n)) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    default: return f(std::integral_constant<int, 128>{});
  }
}

// The checks every format makes of a call (throws InvalidArgument), and of the
// device (DeviceError), whose properties it returns.
inline const DeviceInfo& check_params(const SpmmParams& p) {
  const SparseMatrixView& w = p.weight;
  SPARSELLM_CHECK_ARG(p.n > 0, "spmm: n (rows of x) must be positive, got ", p.n);
  SPARSELLM_CHECK_ARG(w.m > 0 && w.k > 0, "spmm: invalid weight shape ", w.m, "x", w.k);
  SPARSELLM_CHECK_ARG(w.m < INT32_MAX && w.k < INT32_MAX && p.n < INT32_MAX, "spmm: dimensions must fit in int32");
  SPARSELLM_CHECK_ARG(p.x && p.y && w.tile_offsets && p.plan,
                      "spmm: x, y, tile offsets and plan must be device pointers, not null");
  SPARSELLM_CHECK_ARG(p.plan_blocks > 0, "spmm: the plan has no blocks");
  const size_t need = spmm_workspace_bytes(w.m, p.n, p.plan_blocks);
  SPARSELLM_CHECK_ARG(p.workspace != nullptr && p.workspace_bytes >= need, "spmm: workspace of ", p.workspace_bytes,
                      " bytes given, ", need, " needed");
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0, "spmm: workspace must be 16-byte aligned");
  const SpmmNormOut& out = p.norm.out;
  const SpmmNormIn& in = p.norm.in;
  if (out.gamma || out.normed || out.sumsq || in.sumsq) {
    SPARSELLM_CHECK_ARG(p.n <= kSpmmNormFoldMaxRows, "spmm: a norm fold takes up to ", kSpmmNormFoldMaxRows,
                        " rows of x, got ", p.n);
    SPARSELLM_CHECK_ARG(!out.gamma == !out.normed && !out.gamma == !out.sumsq,
                        "spmm: a norm fold's out part needs gamma, normed and sumsq together");
    SPARSELLM_CHECK_ARG(in.eps >= 0.0f, "spmm: a norm fold's eps must be >= 0, got ", in.eps);
    SPARSELLM_CHECK_ARG(!in.sumsq || in.sumsq != out.sumsq,
                        "spmm: a norm fold's in and out parts need sumsq arrays of their own");
    SPARSELLM_CHECK_ARG(!out.normed || (out.normed != p.y && out.normed != p.x),
                        "spmm: a norm fold's normed output may alias neither x nor y");
  }
  return current_device();
}

// Launches `kernel` (one instantiation: its shared-memory opt-in and its
// blocks per SM are recorded per kernel and device) for the product p on
// `stream` on `device` (what check_params returned). The kernel takes its KernelArgs as a
// __grid_constant__ parameter (the address of x_map is given to TMA).
template <typename T, int BN, auto kernel>
void launch(const SpmmParams& p, const DeviceInfo& device, int threads, int smem_bytes, const char* name,
            cudaStream_t stream) {
  // Per device: the shared-memory opt-in set, and how many blocks of the kernel a SM holds (0: not yet asked).
  constexpr int kDevices = 64;
  static std::atomic<int> resident_per_sm[kDevices] = {};
  int per_sm = device.id < kDevices ? resident_per_sm[device.id].load() : 0;
  if (per_sm == 0) {
    SPARSELLM_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    SPARSELLM_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes));
    if (per_sm == 0)
      throw DeviceError(detail::concat("spmm: ", name, " does not fit on a multiprocessor of ", device.name, " (",
                                       threads, " threads, ", smem_bytes, " bytes of shared memory)"));
    if (device.id < kDevices) resident_per_sm[device.id].store(per_sm);
  }
  const SparseMatrixView& w = p.weight;
  KernelArgs<T> a{};
  a.data = w.words;
  a.offsets = w.tile_offsets;
  a.plan = p.plan;
  a.x = static_cast<const T*>(p.x);
  a.bias = static_cast<const T*>(p.bias);
  a.y = static_cast<T*>(p.y);
  a.relu = p.relu;
  a.norm_gamma = static_cast<const T*>(p.norm.out.gamma);
  a.norm_normed = static_cast<T*>(p.norm.out.normed);
  a.norm_sumsq_out = p.norm.out.sumsq;
  a.norm_sumsq_in = p.norm.in.sumsq;
  a.norm_inv_k = 1.0f / float(w.k);
  a.norm_eps = p.norm.in.eps;
  a.m = int(w.m);
  a.k = int(w.k);
  a.n = int(p.n);
  a.tiles_m = int((w.m + kTileM - 1) / kTileM);
  a.tiles_k = int((w.k + kTileK - 1) / kTileK);
  a.blocks = p.plan_blocks;
  const int passes = int((p.n + BN - 1) / BN);
  SPARSELLM_CHECK_ARG(int64_t(passes) * a.tiles_m <= kCounters, "spmm: ", passes, " column passes × ", a.tiles_m,
                      " tile rows exceed the ", kCounters, " arrival counters of the workspace");
  a.counters = static_cast<int*>(p.workspace);
  a.x_vectors = w.k % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
  a.x_tma = a.x_vectors && device.cc_major >= 9;
  // Judged from the SMs the device reports: a process confined to fewer (a green context, an MPS
  // thread limit the count does not show) sets SPARSELLM_SPMM_LEAD_SUMS=0 to keep the ticket protocol.
  static const bool lead_sums = !detail::switched_off("SPARSELLM_SPMM_LEAD_SUMS");
  const bool co_resident = lead_sums && int64_t(p.plan_blocks) * passes <= int64_t(per_sm) * device.sm_count;
  // Up to kFencelessColumns columns a co-resident launch is a fenceless one, so that those kernels
  // compile no counter lead path: one the zone cannot hold (more than kFencelessBlocks blocks, on
  // a GPU that holds that many at once) runs the ticket protocol instead (reduce_row).
  const bool fenceless = BN <= kFencelessColumns && co_resident && p.plan_blocks <= kFencelessBlocks;
  a.co_resident = BN <= kFencelessColumns ? fenceless : co_resident;
  a.slots = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + kCounterBytes +
                                     (fenceless ? 0 : kFencelessZoneBytes));
  if (a.x_tma) a.x_map = x_tile_map(p.x, p.n, w.k, w.dtype, BN);
  // Chained (kernels/launch.h): the blocks may start streaming weights before the previous kernel ends.
  kernels::launch_chained(name, kernel, dim3(p.plan_blocks, passes), dim3(threads), smem_bytes, stream, a);
}

// A shared row's owners (blocks lead .. lead + parts − 1) and this column pass's slots.
struct SharedRow {
  int parts, lead;
  float* pass_slots;
};
template <typename T, int BN>
__device__ __forceinline__ SharedRow shared_row(const KernelArgs<T>& a, const StreamKBlock& blk, bool first) {
  return {first ? blk.first_row_parts : blk.last_row_parts, first ? blk.first_row_lead : blk.last_row_lead,
          a.slots + size_t(blockIdx.y) * 2 * a.blocks * kTileM * BN};
}

// The ticket protocol's arrival (reduce_row), after the block's slot stores:
// one barrier and one thread's fence make them visible before the block's
// ticket is taken. Returns on every thread whether it was the last of `parts`
// (which has then fenced again: the other owners' slots it reads are theirs).
template <typename Sync>
__device__ __forceinline__ bool arrive_last(int* counter, int parts, int* last_flag, Sync sync) {
  if (threadIdx.x == 0) {
    __threadfence();
    *last_flag = atomicAdd(counter, 1) == parts - 1;
  }
  sync();
  const bool last = *last_flag;
  sync();  // every thread has read the flag before it is written again
  if (last) __threadfence();
  return last;
}

// The counter's protocols (reduce_row, below).
template <typename T, int BN, int F, typename Sync>
__device__ bool reduce_row_by_counter(const KernelArgs<T>& a, const StreamKBlock& blk, int row, bool first,
                                      int fragment0, float (&acc)[F][4], int* last_flag, Sync sync) {
  constexpr size_t kSlotElems = size_t(kTileM) * BN;
  const SharedRow r = shared_row<T, BN>(a, blk, first);
  int* counter = a.counters + size_t(blockIdx.y) * a.tiles_m + row;
  auto add_slot = [&](int slot) {
    const float4* part = reinterpret_cast<const float4*>(r.pass_slots + size_t(slot) * kSlotElems);
#pragma unroll
    for (int f = 0; f < F; ++f) {
      const float4 v = __ldcg(part + fragment0 + f * 32);
      acc[f][0] += v.x;
      acc[f][1] += v.y;
      acc[f][2] += v.z;
      acc[f][3] += v.w;
    }
  };
  constexpr int kOwnersInFlight = F >= 8 ? 1 : 8 / F;  // about 8 float4 loads in flight per thread

  const bool lead_sums = a.co_resident && r.lead == int(blockIdx.x);
  if (!lead_sums) {
    float4* mine = reinterpret_cast<float4*>(r.pass_slots + (2 * size_t(blockIdx.x) + (first ? 0 : 1)) * kSlotElems);
#pragma unroll
    for (int f = 0; f < F; ++f)
      __stcg(mine + fragment0 + f * 32, make_float4(acc[f][0], acc[f][1], acc[f][2], acc[f][3]));
    sync();
    if (a.co_resident) {
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1);
      }
      return false;
    }
    if (!arrive_last(counter, r.parts, last_flag, sync)) return false;
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
    const int lead_slot = 2 * r.lead + (a.plan[r.lead].unit_begin / a.tiles_k == row ? 0 : 1);
#pragma unroll kOwnersInFlight
    for (int i = 0; i < r.parts; ++i) add_slot(i == 0 ? lead_slot : 2 * (r.lead + i));
    if (threadIdx.x == 0) *counter = 0;
    return true;
  }

  if (threadIdx.x == 0) {
    while (ptx::ld_acquire_gpu(counter) != r.parts - 1) {
    }
    *counter = 0;  // every owner has arrived: nobody else touches it in this launch
  }
  sync();  // the others' loads come after thread 0's acquire
#pragma unroll kOwnersInFlight
  for (int i = 1; i < r.parts; ++i) add_slot(2 * (r.lead + i));
  return true;
}

// A co-resident launch's shared row without a fence or a counter, for blocks
// of up to kFencelessColumns columns (reduce_row). Its slots lie in the
// workspace's fenceless zone (stream_k::launch), where zero bits mean "not yet
// written": the workspace starts zero-filled, a writer stores +0.0 as −0.0
// (which adds the same), and the lead zeroes what it read. The others store
// their partial into their first-row slot and go on; the lead spins on the
// slots' words themselves (relaxed loads at GPU scope; each 32-bit word is
// written once a launch, in one access; the spin is warp-uniform: a divergent
// one would serialize wgmma around the accumulators) and adds them to its own
// partial in block order, 8 loads of 16 bytes in flight a thread. Handing a
// partial over costs its stores and the lead's L2 round trip, where the
// counter adds a fence and its own round trip before the data's. Nothing a
// writer does waits, so the spin ends.
template <typename T, int BN, int F>
__device__ bool reduce_row_fenceless(const KernelArgs<T>& a, const StreamKBlock& blk, bool first, int fragment0,
                                     float (&acc)[F][4]) {
  static_assert(F <= 8, "one round holds every fragment of an owner");
  constexpr size_t kSlotElems = size_t(kTileM) * BN;
  const SharedRow r = shared_row<T, BN>(a, blk, first);
  auto fragments = [&](int block) {
    return reinterpret_cast<uint4*>(r.pass_slots + size_t(2 * block) * kSlotElems) + fragment0;
  };
  if (r.lead != int(blockIdx.x)) {
    auto nonzero_bits = [](float v) {
      const uint32_t bits = __float_as_uint(v);
      return bits != 0u ? bits : 0x80000000u;  // +0.0 as −0.0: zero bits are "not written"
    };
    uint4* mine = fragments(blockIdx.x);
#pragma unroll
    for (int f = 0; f < F; ++f)
      ptx::st_relaxed_gpu_v4(mine + f * 32, make_uint4(nonzero_bits(acc[f][0]), nonzero_bits(acc[f][1]),
                                                       nonzero_bits(acc[f][2]), nonzero_bits(acc[f][3])));
    return false;
  }
  constexpr int kOwners = 8 / F;  // owners a round
  for (int i0 = 1; i0 < r.parts; i0 += kOwners) {
    uint4* slot[kOwners];
#pragma unroll
    for (int o = 0; o < kOwners; ++o) slot[o] = fragments(r.lead + (i0 + o < r.parts ? i0 + o : i0));
    uint4 v[kOwners][F];
    bool written;
    do {  // once, but where an owner's words are not all there yet
      written = true;
#pragma unroll
      for (int o = 0; o < kOwners; ++o)
#pragma unroll
        for (int f = 0; f < F; ++f) {
          v[o][f] = i0 + o < r.parts ? ptx::ld_relaxed_gpu_v4(slot[o] + f * 32) : make_uint4(1, 1, 1, 1);
          written = written && v[o][f].x != 0u && v[o][f].y != 0u && v[o][f].z != 0u && v[o][f].w != 0u;
        }
    } while (!__all_sync(0xFFFFFFFFu, written));
#pragma unroll
    for (int o = 0; o < kOwners; ++o)
#pragma unroll
      for (int f = 0; f < F; ++f) {
        if (i0 + o >= r.parts) continue;
        acc[f][0] += __uint_as_float(v[o][f].x);
        acc[f][1] += __uint_as_float(v[o][f].y);
        acc[f][2] += __uint_as_float(v[o][f].z);
        acc[f][3] += __uint_as_float(v[o][f].w);
        ptx::st_relaxed_gpu_v4(slot[o] + f * 32, make_uint4(0u, 0u, 0u, 0u));
      }
  }
  return true;
}

// The reduction of a tile row that `parts` > 1 blocks share, for one block's
// threads that hold fragments (`sync` is their barrier); fragment f of a
// thread is float4 index fragment0 + 32 f of a slot. The owners are blocks
// lead .. lead + parts − 1 (the plan leaves no empty block among them). The
// row is the lead's last row (its range ends in it) and every other owner's
// first row, so those finish their part early in their range and the lead
// and middle owners at the end of theirs. Returns true on the block that then
// holds the row's sum in acc (it stores Y); acc is left as it was elsewhere.
//
// Where every block of the launch is resident at once (a.co_resident) the
// lead sums: the others store their partial into their first-row slot
// (2 · block) and count their arrival without waiting for anything; the lead
// waits for the count of parts − 1, adds their slots to its own partial in
// block order (the same order every launch: deterministic) and resets the
// counter for the next launch. The lead never waits for a block that waits.
// Otherwise (more blocks than the GPU holds: a waiting lead could hold the
// place of an owner not yet started) the last owner to arrive sums: each
// stores its slot (2 · block for its first row, + 1 for its last) and takes
// a ticket; the last sums every owner's slot in block order. In both, one
// barrier and one thread's fence make the block's slot stores visible before
// its arrival is (a release by the PTX memory model's cumulativity).
//
// Co-resident launches of blocks of up to kFencelessColumns columns hand the
// lead their partials without the counter (reduce_row_fenceless).
template <typename T, int BN, int F, typename Sync>
__device__ bool reduce_row(const KernelArgs<T>& a, const StreamKBlock& blk, int row, bool first, int fragment0,
                           float (&acc)[F][4], int* last_flag, Sync sync) {
  if constexpr (BN <= kFencelessColumns)
    if (a.co_resident) return reduce_row_fenceless<T, BN>(a, blk, first, fragment0, acc);
  return reduce_row_by_counter<T, BN>(a, blk, row, first, fragment0, acc, last_flag, sync);
}

}  // namespace sparsellm::stream_k
