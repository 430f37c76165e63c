// An NCCL communicator for tensor parallelism: one rank per process and GPU.
//
//   Communicator comm(options.tp);                 // ncclCommInitRank on the current device
//   comm.all_reduce_sum(y, rows * cols, dtype, s);  // y[i] = Σ_ranks y[i], in place, on stream s
//   comm.synchronize(s);                           // cudaStreamSynchronize that cannot hang
//
// The communicator is blocking (NCCL's default), so its collectives may be
// captured into CUDA graphs (NCCL ≥ 2.9 supports stream capture; the first
// collective runs eagerly, outside any capture, and sets up the connections).
//
// Small all-reduces (≤ 256 KiB: a decode step's) go through a one-shot kernel
// over peer-to-peer memory instead of NCCL when every rank is on one host and
// reaches every other GPU peer to peer (peer_all_reduce.h); set
// SPARSELLM_PEER_ALL_REDUCE=0 to leave every all-reduce to NCCL.
//
// Failure handling. A peer that dies leaves this rank's all-reduce kernel
// spinning; a plain cudaStreamSynchronize would wait forever. So every host
// wait goes through wait()/synchronize(): they poll the event and
// ncclCommGetAsyncError; on an asynchronous NCCL error, when the wait lasts
// longer than timeout_s, or when a peer all-reduce gave up waiting for a rank,
// they mark the communicator failed and throw NcclError. The owner then
// destroys every CUDA graph that captured a collective of this communicator
// and calls abort(): it releases waiting peer all-reduce kernels, and
// ncclCommAbort sets the flag that makes NCCL's kernels return, then waits
// until no graph holding its collectives is left (aborting with such graphs
// alive never returns).
// A failed or aborted communicator refuses further work.
//
// Teardown: the owner synchronizes its streams and destroys its graphs first.
// The destructor then finalizes and destroys a healthy communicator
// (the peer buffers unmapped and freed behind two barriers, then
// ncclCommFinalize + ncclCommDestroy: collective, every rank tears down
// alike) and aborts a failed one (local).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "sparsellm/tensor_parallel.h"
#include "sparsellm/types.h"

namespace sparsellm {

class PeerAllReduce;

class Communicator {
 public:
  // Joins the communicator of options.world ranks identified by options.nccl_id
  // on the current CUDA device; blocks until every rank has joined.
  explicit Communicator(const TensorParallelOptions& options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  double timeout_s() const { return timeout_s_; }

  // data[count] of `dtype` (device memory) ← the element-wise sum over ranks,
  // in place, enqueued on `stream` (capturable).
  void all_reduce_sum(void* data, size_t count, DType dtype, cudaStream_t stream) const;

  // Collective, blocking (not for per-step use): true when `ok` is true on
  // every rank. Decisions that change which collectives run — e.g. whether a
  // decode step replays a captured graph (NCCL requires every rank to launch a
  // collective the same way, captured or not) — are made together.
  bool all_agree(bool ok, cudaStream_t stream) const;
  // Collective, blocking (setup only): every rank's `bytes` bytes at `mine`, in rank order.
  std::vector<char> all_gather_bytes(const void* mine, size_t bytes, cudaStream_t stream) const;
  // Whether small all-reduces take the peer-to-peer kernel (the same on every rank).
  bool uses_peer_all_reduce() const { return peer_ != nullptr; }
  // Whether an all-reduce of `count` elements takes it (else NCCL).
  bool takes_peer_path(size_t count) const;

  // Blocks until `event` completed, polling NCCL's asynchronous errors;
  // marks the communicator failed and throws NcclError on an error or after
  // timeout_s (the owner then destroys its graphs and calls abort()).
  void wait(cudaEvent_t event, const char* what) const;
  // wait() on everything enqueued so far on `stream`.
  void synchronize(cudaStream_t stream, const char* what) const;
  // Throws NcclError (marking the communicator failed) when NCCL reports an asynchronous error.
  void check_async() const;
  // Aborts the communicator: NCCL's kernels on this rank return; idempotent.
  // Destroy the graphs that captured its collectives first.
  void abort() const noexcept;
  bool failed() const { return failed_; }    // a wait saw an error or timed out
  bool aborted() const { return aborted_; }

 private:
  [[noreturn]] void fail(const std::string& message) const;
  void refuse_if_failed() const;  // NcclError once the communicator failed or was aborted
  void release() noexcept;  // what the constructor acquired, for its failure path and the destructor

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, world_ = 1;
  double timeout_s_ = 120.0;
  cudaEvent_t sync_event_ = nullptr;  // synchronize()'s marker
  int32_t* flag_device_ = nullptr;    // [1] all_agree's value
  int32_t* flag_host_ = nullptr;      // [1] pinned
  cudaStream_t setup_stream_ = nullptr;          // the peer all-reduce's setup and teardown collectives
  std::unique_ptr<PeerAllReduce> peer_;          // null: NCCL does every all-reduce
  mutable bool failed_ = false, aborted_ = false;
};

// The timeout in effect for `requested` (TensorParallelOptions::timeout_s):
// itself when > 0, else $SPARSELLM_COMM_TIMEOUT_S, else 120 s.
double comm_timeout_s(double requested);

}  // namespace sparsellm
