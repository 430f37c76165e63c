// A one-shot all-reduce over peer-to-peer GPU memory, for the small messages of
// a tensor-parallel decode step (a few tokens × hidden, 16 KB at batch 1).
//
// NCCL's all-reduce of such a message costs ≈ 10.5 µs on 4 H200s over NVLink,
// most of it latency; this kernel ≈ 7.4 µs (docs/kernel-notes.md). Here every
// rank owns one buffer that all ranks map (CUDA IPC between processes; the raw
// pointer with peer access between threads of one process), and one kernel does
// the whole collective:
//
//   block b of rank r:  copy slice b of x_r into buffer_r[e mod 2]
//                       signal slice b of epoch e to every rank (flag store, system scope)
//                       wait for every rank's signal of slice b, epoch e
//                       y[slice b] = Σ_{q = 0..W−1} buffer_q[e mod 2][slice b]   (fp32, rank order)
//
// so each rank reads (W − 1) × bytes over NVLink and the result is the same,
// bit for bit, on every rank. The epoch e of block b counts its calls (kept in
// device memory, so replayed CUDA graphs advance it). Two buffers by parity
// make a second barrier unnecessary: rank q writes buffer_q[e mod 2] again only
// in call e + 2, which starts after its block b saw every rank's signal of
// e + 1, which each rank sends after it finished reading epoch e.
//
// A peer that never signals: the waiting threads give up after the
// communicator's timeout (+1 s, so that the host's own timeout reports first),
// record which rank was missing in host-mapped memory and return; abort()
// releases them at once. Communicator::check_async() turns the record into an
// NcclError. Later calls return at once without reading (the communicator has
// failed).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "sparsellm/types.h"

namespace sparsellm {

class Communicator;

class PeerAllReduce {
 public:
  static constexpr int kMaxRanks = 8;
  static constexpr int kBlocks = 16;
  static constexpr size_t kMaxBytes = size_t(256) << 10;  // per parity: decode at batch ≤ 16 × hidden 8,192;
  // above it NCCL is faster (4 × H200 over NVLink: equal at 256 KiB, 1.8× faster at 1 MiB)

  // The kernel's argument.
  struct Params {
    void* data;                  // [count] in and out
    int64_t count;
    char* regions[kMaxRanks];    // every rank's region as mapped here (own included)
    uint32_t* epochs;            // this rank's, not shared: [kBlocks] calls so far per block, then the give-up marker
    volatile int32_t* control;   // host-mapped [2]: missing rank + 1, cancel (the host uses the same address)
    uint64_t timeout_ns;
    int rank, world;
  };

  // Collective over `comm` (every rank calls it, with `stream` for the setup's
  // collectives): sets the buffers up when every rank is on this host, sees
  // every other rank's GPU and reaches it peer to peer, and
  // SPARSELLM_PEER_ALL_REDUCE is not "0"; else returns nullptr on every rank
  // (NCCL then does every all-reduce). `device` is this rank's GPU.
  static std::unique_ptr<PeerAllReduce> create(const Communicator& comm, int device, cudaStream_t stream);
  ~PeerAllReduce();
  PeerAllReduce(const PeerAllReduce&) = delete;
  PeerAllReduce& operator=(const PeerAllReduce&) = delete;

  // Whether all_reduce_sum takes `count` elements (≤ kMaxBytes). It depends on the count
  // alone, which every rank shares, so every rank takes the same path.
  bool takes(size_t count) const;
  // data[count] ← Σ_ranks data[count], in place, on `stream` (capturable); launched chained.
  void all_reduce_sum(void* data, size_t count, DType dtype, cudaStream_t stream) const;

  // 0, or 1 + the rank whose signal a call gave up waiting for.
  int missing_rank_plus_one() const;
  // Makes waiting kernels return now; idempotent.
  void cancel() const noexcept;
  // Teardown of a healthy communicator, collective: every rank stops mapping
  // its peers' buffers before any rank frees its own. Without it (a failed
  // communicator) the destructor unmaps and frees at once.
  void close(const Communicator& comm, cudaStream_t stream);

 private:
  PeerAllReduce() = default;
  void unmap_peers() noexcept;

  Params params_ = {};                  // set up once; each call adds its data and count
  char* region_ = nullptr;              // own: [2][kMaxBytes] buffers, then [kMaxRanks][kBlocks] flags
  bool opened_by_ipc_[kMaxRanks] = {};  // to cudaIpcCloseMemHandle
};

// The kernel's launcher (peer_all_reduce.cu): POD parameters, no framework types.
void launch_peer_all_reduce(const PeerAllReduce::Params& p, DType dtype, cudaStream_t stream);

}  // namespace sparsellm
