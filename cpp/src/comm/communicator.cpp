// The NCCL communicator (see communicator.h).
#include "comm/communicator.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "comm/check.h"
#include "comm/peer_all_reduce.h"
#include "common/check.h"
#include "sparsellm/error.h"

namespace sparsellm {

double comm_timeout_s(double requested) {
  if (requested > 0.0) return requested;
  if (const char* env = std::getenv("SPARSELLM_COMM_TIMEOUT_S")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && *end == '\0' && v > 0.0) return v;
    throw InvalidArgument(detail::concat("SPARSELLM_COMM_TIMEOUT_S must be a positive number of seconds, got '", env,
                                         "'"));
  }
  return 120.0;
}

Communicator::Communicator(const TensorParallelOptions& o) : rank_(o.rank), world_(o.world) {
  SPARSELLM_CHECK_ARG(o.world >= 1 && o.rank >= 0 && o.rank < o.world, "tensor parallelism: rank ", o.rank,
                      " is outside [0, world = ", o.world, ")");
  SPARSELLM_CHECK_ARG(o.nccl_id.size() == sizeof(ncclUniqueId), "tensor parallelism: the NCCL id has ",
                      o.nccl_id.size(), " bytes, expected ", sizeof(ncclUniqueId),
                      " (from nccl_unique_id() on rank 0, the same on every rank)");
  static_assert(sizeof(ncclUniqueId) == kNcclIdBytes, "kNcclIdBytes must be sizeof(ncclUniqueId)");
  timeout_s_ = comm_timeout_s(o.timeout_s);
  ncclUniqueId id;
  std::memcpy(&id, o.nccl_id.data(), sizeof(id));
  SPARSELLM_CHECK_NCCL(ncclCommInitRank(&comm_, o.world, id, o.rank));
  try {
    SPARSELLM_CHECK_CUDA(cudaEventCreateWithFlags(&sync_event_, cudaEventDisableTiming));
    SPARSELLM_CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&flag_device_), sizeof(int32_t)));
    SPARSELLM_CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&flag_host_), sizeof(int32_t)));
    if (world_ > 1) {
      int device = 0;
      SPARSELLM_CHECK_CUDA(cudaGetDevice(&device));
      SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&setup_stream_, cudaStreamNonBlocking));
      peer_ = PeerAllReduce::create(*this, device, setup_stream_);
    }
  } catch (...) {
    failed_ = true;  // a peer may be mid-collective: abort rather than finalize
    release();
    throw;
  }
}

Communicator::~Communicator() {
  if (peer_ && !failed_ && !aborted_) {
    try {
      peer_->close(*this, setup_stream_);
    } catch (...) {  // a peer died during teardown: this rank's own buffers are freed regardless
    }
  }
  release();
}

void Communicator::release() noexcept {
  peer_.reset();
  if (setup_stream_) cudaStreamDestroy(setup_stream_);
  setup_stream_ = nullptr;
  if (sync_event_) cudaEventDestroy(sync_event_);
  if (flag_device_) cudaFree(flag_device_);
  if (flag_host_) cudaFreeHost(flag_host_);
  sync_event_ = nullptr;
  flag_device_ = nullptr;
  flag_host_ = nullptr;
  if (!comm_ || aborted_) return;  // ncclCommAbort freed it
  ncclResult_t async = ncclSuccess;
  if (failed_ || ncclCommGetAsyncError(comm_, &async) != ncclSuccess || async != ncclSuccess) {
    ncclCommAbort(comm_);
  } else if (ncclCommFinalize(comm_) == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    ncclCommAbort(comm_);
  }
  comm_ = nullptr;
}

void Communicator::abort() const noexcept {
  if (peer_) peer_->cancel();  // its waiting kernels return
  if (aborted_ || !comm_) return;
  aborted_ = true;
  ncclCommAbort(comm_);
}

void Communicator::fail(const std::string& message) const {
  const char* last = ncclGetLastError(comm_);
  std::string full = detail::concat("tensor parallelism, rank ", rank_, " of ", world_, ": ", message);
  if (last != nullptr && last[0] != '\0') full += detail::concat(" (NCCL: ", last, ")");
  failed_ = true;
  throw NcclError(full);
}

void Communicator::refuse_if_failed() const {
  if (failed_ || aborted_)
    throw NcclError(detail::concat("tensor parallelism, rank ", rank_, ": the communicator failed earlier"));
}

void Communicator::check_async() const {
  refuse_if_failed();
  if (peer_ && peer_->missing_rank_plus_one() != 0)
    fail(detail::concat("peer all-reduce: no signal from rank ", peer_->missing_rank_plus_one() - 1, " within ",
                        timeout_s_ + 1.0, " s: a peer rank failed or exited"));
  ncclResult_t async = ncclSuccess;
  SPARSELLM_CHECK_NCCL(ncclCommGetAsyncError(comm_, &async));
  if (async != ncclSuccess && async != ncclInProgress)
    fail(detail::concat("asynchronous NCCL error ", int(async), " (", ncclGetErrorString(async),
                        "): a peer rank failed or exited"));
}

void Communicator::all_reduce_sum(void* data, size_t count, DType dtype, cudaStream_t stream) const {
  refuse_if_failed();
  if (world_ == 1 || count == 0) return;
  SPARSELLM_CHECK_ARG(data != nullptr, "all_reduce_sum: null buffer");
  if (takes_peer_path(count)) return peer_->all_reduce_sum(data, count, dtype, stream);
  const ncclDataType_t type = dtype == DType::kFloat16 ? ncclFloat16 : ncclBfloat16;
  SPARSELLM_CHECK_NCCL(ncclAllReduce(data, data, count, type, ncclSum, comm_, stream));
}

bool Communicator::all_agree(bool ok, cudaStream_t stream) const {
  refuse_if_failed();
  *flag_host_ = ok ? 1 : 0;
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(flag_device_, flag_host_, sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  SPARSELLM_CHECK_NCCL(ncclAllReduce(flag_device_, flag_device_, 1, ncclInt32, ncclMin, comm_, stream));
  SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(flag_host_, flag_device_, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  synchronize(stream, "agreeing across ranks");
  return *flag_host_ != 0;
}

bool Communicator::takes_peer_path(size_t count) const { return peer_ && peer_->takes(count); }

std::vector<char> Communicator::all_gather_bytes(const void* mine, size_t bytes, cudaStream_t stream) const {
  refuse_if_failed();
  std::vector<char> all(bytes * size_t(world_));
  char* staging = nullptr;  // [world][bytes]
  SPARSELLM_CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&staging), all.size()));
  try {
    char* slot = staging + bytes * size_t(rank_);
    SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(slot, mine, bytes, cudaMemcpyHostToDevice, stream));
    SPARSELLM_CHECK_NCCL(ncclAllGather(slot, staging, bytes, ncclChar, comm_, stream));
    SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(all.data(), staging, all.size(), cudaMemcpyDeviceToHost, stream));
    synchronize(stream, "exchanging peer all-reduce buffers");
  } catch (...) {
    cudaFree(staging);
    throw;
  }
  SPARSELLM_CHECK_CUDA(cudaFree(staging));
  return all;
}

void Communicator::wait(cudaEvent_t event, const char* what) const {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  for (int polls = 0;; ++polls) {
    const cudaError_t status = cudaEventQuery(event);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) SPARSELLM_CHECK_CUDA(status);
    check_async();
    const double waited = std::chrono::duration<double>(clock::now() - start).count();
    if (waited > timeout_s_)
      fail(detail::concat(what, ": no completion after ", waited, " s (timeout ", timeout_s_,
                          " s, SPARSELLM_COMM_TIMEOUT_S): a peer rank is stuck or has died"));
    // Spin briefly (a decode step is short), then sleep: a dead peer is noticed within milliseconds.
    if (polls < 2000)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void Communicator::synchronize(cudaStream_t stream, const char* what) const {
  SPARSELLM_CHECK_CUDA(cudaEventRecord(sync_event_, stream));
  wait(sync_event_, what);
}

}  // namespace sparsellm
