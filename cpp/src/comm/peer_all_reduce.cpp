// Setup and teardown of the one-shot peer all-reduce (see peer_all_reduce.h).
#include "comm/peer_all_reduce.h"

#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/check.h"

namespace sparsellm {
namespace {

constexpr size_t kFlagBytes = size_t(PeerAllReduce::kMaxRanks) * PeerAllReduce::kBlocks * sizeof(uint32_t);
constexpr size_t kRegionBytes = 2 * PeerAllReduce::kMaxBytes + kFlagBytes;

// What a rank tells the others at setup (exchanged with one all-gather).
struct PeerInfo {
  uint64_t host;                // hash of the host name
  int64_t pid;
  uint64_t region;              // the raw pointer, for ranks of one process
  char bus_id[32];              // the GPU's PCI bus id
  cudaIpcMemHandle_t handle;    // the region, for ranks of other processes
  int32_t usable;               // its buffers were allocated and exported
  int32_t pad = 0;
};


uint64_t host_hash() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return std::hash<std::string>{}(name);
}

// A setup step that may fail without making the process unusable: false on failure, the error cleared.
bool succeeded(cudaError_t status) {
  if (status == cudaSuccess) return true;
  cudaGetLastError();
  return false;
}

}  // namespace

std::unique_ptr<PeerAllReduce> PeerAllReduce::create(const Communicator& comm, int device, cudaStream_t stream) {
  const int world = comm.world(), rank = comm.rank();
  if (world < 2) return nullptr;
  std::unique_ptr<PeerAllReduce> self(new PeerAllReduce());
  Params& p = self->params_;
  p.rank = rank;
  p.world = world;
  p.timeout_ns = uint64_t((comm.timeout_s() + 1.0) * 1e9);

  // 1. Allocate and export this rank's region (every step may fail: then NCCL does the work).
  PeerInfo mine{};
  mine.host = host_hash();
  mine.pid = int64_t(getpid());
  bool ok = world <= kMaxRanks && !detail::switched_off("SPARSELLM_PEER_ALL_REDUCE");
  ok = ok && succeeded(cudaMalloc(reinterpret_cast<void**>(&self->region_), kRegionBytes));
  ok = ok && succeeded(cudaMemset(self->region_ + 2 * kMaxBytes, 0, kFlagBytes));
  ok = ok && succeeded(cudaMalloc(reinterpret_cast<void**>(&p.epochs), (kBlocks + 1) * sizeof(uint32_t)));
  ok = ok && succeeded(cudaMemset(p.epochs, 0, (kBlocks + 1) * sizeof(uint32_t)));
  int32_t* control = nullptr;  // mapped pinned memory: the same address on the device (unified addressing)
  ok = ok && succeeded(cudaHostAlloc(reinterpret_cast<void**>(&control), 2 * sizeof(int32_t), cudaHostAllocMapped));
  p.control = control;
  if (ok) control[0] = control[1] = 0;
  ok = ok && succeeded(cudaIpcGetMemHandle(&mine.handle, self->region_));
  ok = ok && succeeded(cudaDeviceGetPCIBusId(mine.bus_id, sizeof(mine.bus_id), device));
  ok = ok && succeeded(cudaDeviceSynchronize());  // the memsets, before a peer signals into the flags
  mine.region = uint64_t(reinterpret_cast<uintptr_t>(self->region_));
  mine.usable = ok ? 1 : 0;

  // 2. Everyone's, and whether this rank reaches every other one peer to peer.
  const std::vector<char> gathered = comm.all_gather_bytes(&mine, sizeof(mine), stream);
  std::vector<PeerInfo> all(static_cast<size_t>(world));
  std::memcpy(all.data(), gathered.data(), sizeof(PeerInfo) * size_t(world));
  std::vector<int> devices(static_cast<size_t>(world), device);
  bool reachable = true;
  for (int q = 0; q < world; ++q) {
    const PeerInfo& peer = all[size_t(q)];
    reachable = reachable && peer.usable && peer.host == mine.host;
    if (!reachable || q == rank) continue;
    int peer_access = 0;
    reachable = succeeded(cudaDeviceGetByPCIBusId(&devices[size_t(q)], peer.bus_id)) && devices[size_t(q)] != device &&
                succeeded(cudaDeviceCanAccessPeer(&peer_access, device, devices[size_t(q)])) && peer_access == 1;
  }
  if (!comm.all_agree(reachable, stream)) return nullptr;

  // 3. Map every peer's region: the raw pointer with peer access within a process, CUDA IPC across processes.
  bool mapped = true;
  for (int q = 0; q < world && mapped; ++q) {
    const PeerInfo& peer = all[size_t(q)];
    if (q == rank) {
      p.regions[q] = self->region_;
    } else if (peer.pid == mine.pid) {
      const cudaError_t status = cudaDeviceEnablePeerAccess(devices[size_t(q)], 0);
      mapped = status == cudaSuccess || status == cudaErrorPeerAccessAlreadyEnabled;
      cudaGetLastError();
      p.regions[q] = reinterpret_cast<char*>(uintptr_t(peer.region));
    } else {
      mapped = succeeded(cudaIpcOpenMemHandle(reinterpret_cast<void**>(&p.regions[q]), peer.handle,
                                              cudaIpcMemLazyEnablePeerAccess));
      self->opened_by_ipc_[q] = mapped;
    }
  }
  if (!comm.all_agree(mapped, stream)) {
    self->unmap_peers();
    comm.all_agree(true, stream);  // no rank frees its region while another still maps it
    return nullptr;
  }
  return self;
}

bool PeerAllReduce::takes(size_t count) const { return count * sizeof(uint16_t) <= kMaxBytes; }

void PeerAllReduce::all_reduce_sum(void* data, size_t count, DType dtype, cudaStream_t stream) const {
  Params p = params_;
  p.data = data;
  p.count = int64_t(count);
  launch_peer_all_reduce(p, dtype, stream);
}

int PeerAllReduce::missing_rank_plus_one() const { return params_.control ? params_.control[0] : 0; }

void PeerAllReduce::cancel() const noexcept {
  if (params_.control) params_.control[1] = 1;
}

void PeerAllReduce::close(const Communicator& comm, cudaStream_t stream) {
  comm.all_agree(true, stream);  // every rank is done with its peers' buffers
  unmap_peers();
  comm.all_agree(true, stream);  // ... and has unmapped them: the destructor may free
}

void PeerAllReduce::unmap_peers() noexcept {
  for (int q = 0; q < kMaxRanks; ++q) {
    if (opened_by_ipc_[q]) cudaIpcCloseMemHandle(params_.regions[q]);
    opened_by_ipc_[q] = false;
    params_.regions[q] = nullptr;
  }
}

PeerAllReduce::~PeerAllReduce() {
  unmap_peers();
  if (region_) cudaFree(region_);
  if (params_.epochs) cudaFree(params_.epochs);
  if (params_.control) cudaFreeHost(const_cast<int32_t*>(params_.control));
}

}  // namespace sparsellm
