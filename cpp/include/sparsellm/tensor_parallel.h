// Tensor parallelism: one process per GPU, N processes run one model.
//
//   rank r of N holds the r-th shard of every split tensor (docs/checkpoint.md,
//   "Tensor parallelism"): q/k/v and fc1 by output rows (heads and FFN units
//   [r·X/N, (r+1)·X/N)), out_proj and fc2 by input columns, the latter two
//   followed by an NCCL all-reduce (sum) of their [tokens, hidden] output on
//   the compute stream; everything else replicated.
//
// Bootstrap under mpirun (the C++ side; Python does the same with mpi4py in
// sparsellm.launch):
//
//   sparsellm::MpiSession mpi(&argc, &argv);           // MPI_Init
//   std::string error = mpi.gather_errors(             // collective: every rank learns every error
//       sparsellm::tensor_parallel_error(dir, mpi.rank(), mpi.world()));
//   if (!error.empty()) { print; return 1; }            // the same clear error on every rank
//   sparsellm::LLMOptions options;
//   options.tp = mpi.tensor_parallel();                 // rank 0's NCCL id broadcast; device = local rank
//   sparsellm::LLM llm(dir, options);
//
// Failure handling: every host wait on the GPU under tensor parallelism polls
// NCCL's asynchronous error state; an error, or no progress for timeout_s
// (a dead or stuck peer), aborts the communicator (ncclCommAbort), which
// releases this rank's kernels, and throws NcclError.
#pragma once

#include <string>

namespace sparsellm {

inline constexpr int kNcclIdBytes = 128;  // sizeof(ncclUniqueId)

struct TensorParallelOptions {
  int rank = 0;              // this process's rank, in [0, world)
  int world = 1;             // number of ranks; 1: no tensor parallelism
  std::string nccl_id;       // kNcclIdBytes bytes from nccl_unique_id() on rank 0, the same on every rank
  int device = -1;           // CUDA device of this rank; −1: the current device
  double timeout_s = 0.0;    // a host wait that sees no GPU progress for this long aborts;
                             // 0: $SPARSELLM_COMM_TIMEOUT_S, else 120
};

// A fresh NCCL unique id (kNcclIdBytes bytes), to be created by rank 0 and sent to every rank.
std::string nccl_unique_id();

// The checks a rank can make before any GPU work: config.json is readable,
// its tp equals `world`, 0 ≤ rank < world, the number of attention heads (and
// KV heads) and the FFN size divide by world, and this rank's file exists.
// Returns "" when they pass, else the error message (naming the file).
std::string tensor_parallel_error(const std::string& checkpoint_dir, int rank, int world);

// The MPI side of the bootstrap. Needs libsparsellm built with MPI (otherwise
// every member throws MpiError saying so).
class MpiSession {
 public:
  // Initializes MPI unless it is already initialized (then finalize is left to its owner).
  MpiSession(int* argc, char*** argv);
  ~MpiSession();  // MPI_Finalize when this session initialized MPI
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this host

  // Collective. Rank 0 creates the NCCL id and broadcasts it; the device is
  // the local rank (DeviceError when the host has fewer GPUs), made current.
  TensorParallelOptions tensor_parallel() const;
  // Collective. Every rank passes its error ("" when none); returns "" when
  // every rank passed "", else one line per failing rank ("rank r: error").
  std::string gather_errors(const std::string& error) const;
  // Ends every rank of the job (MPI_Abort) after an error seen by this rank only.
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  bool owns_ = false;
};

}  // namespace sparsellm
