// The NCCL communicator between the GPUs of this machine, one thread per GPU
// (as one process per GPU would be under mpirun): the in-place all-reduce sum
// against the host sum, fp16 and bf16, awkward sizes on both paths (the
// peer-to-peer kernel up to 256 KiB, NCCL above); the peer kernel over many calls
// and replayed CUDA graphs, bit-identical on every rank; all_agree; and the
// failure path — a peer that never joins the collective makes the waiting rank
// give up after its timeout (NcclError, failed()) instead of hanging, and
// abort() releases the stuck kernel. Skips with fewer than 2 GPUs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "common/check.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"
#include "sparsellm/tensor_parallel.h"

namespace sparsellm {
namespace {

// Storage bits of v rounded to nearest even, and back (CUDA's host conversions).
uint16_t to_bits(float v, DType dt) {
  return dt == DType::kFloat16 ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

float from_bits(uint16_t b, DType dt) {
  return dt == DType::kFloat16 ? __half2float(__ushort_as_half(b)) : __bfloat162float(__ushort_as_bfloat16(b));
}

// Runs body(rank) on `world` threads, rank r on device r; rethrows the first failure.
void on_every_rank(int world, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        SPARSELLM_CHECK_CUDA(cudaSetDevice(r));
        body(r);
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

TensorParallelOptions options(int rank, int world, const std::string& id, double timeout_s = 0.0) {
  TensorParallelOptions o;
  o.rank = rank;
  o.world = world;
  o.nccl_id = id;
  o.device = rank;
  o.timeout_s = timeout_s;
  return o;
}

// Whether every pair of the first `world` GPUs reaches each other peer to peer (the peer all-reduce's condition).
bool peer_to_peer(int world) {
  for (int a = 0; a < world; ++a)
    for (int b = 0; b < world; ++b) {
      int can = 1;
      if (a != b) SPARSELLM_CHECK_CUDA(cudaDeviceCanAccessPeer(&can, a, b));
      if (!can) return false;
    }
  return true;
}

class CommunicatorTest : public ::testing::TestWithParam<int> {};

TEST_P(CommunicatorTest, AllReduceSumMatchesTheHostSum) {
  const int world = GetParam();
  if (device_count() < world) GTEST_SKIP() << "needs " << world << " GPUs";
  const std::string id = nccl_unique_id();
  on_every_rank(world, [&](int rank) {
    Communicator comm(options(rank, world, id));
    EXPECT_EQ(comm.rank(), rank);
    EXPECT_EQ(comm.world(), world);
    EXPECT_EQ(comm.uses_peer_all_reduce(), peer_to_peer(world));
    cudaStream_t stream;
    SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
      // Peer kernel: up to 256 KiB (128 Ki elements; 8,192 = a decode step's hidden at batch 1); NCCL above.
      for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(8192), size_t(12345), size_t(1) << 17,
                       (size_t(1) << 17) + 1, size_t(3) << 20}) {
        // x_r[i] = ((i · 7 + r · 3) mod 17) − 8: small integers, every sum exact in fp16 and bf16
        std::vector<uint16_t> host(n), back(n);
        for (size_t i = 0; i < n; ++i) host[i] = to_bits(float(int((i * 7 + size_t(rank) * 3) % 17) - 8), dt);
        void* buf = nullptr;
        SPARSELLM_CHECK_CUDA(cudaMalloc(&buf, n * 2));
        SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(buf, host.data(), n * 2, cudaMemcpyHostToDevice, stream));
        comm.all_reduce_sum(buf, n, dt, stream);
        SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(back.data(), buf, n * 2, cudaMemcpyDeviceToHost, stream));
        comm.synchronize(stream, "test");
        SPARSELLM_CHECK_CUDA(cudaFree(buf));
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
          float want = 0.0f;
          for (int r = 0; r < world; ++r) want += float(int((i * 7 + size_t(r) * 3) % 17) - 8);
          if (from_bits(back[i], dt) != want && bad++ < 3)
            ADD_FAILURE() << "rank " << rank << ", " << dtype_name(dt) << ", n " << n << ", i " << i << ": "
                          << from_bits(back[i], dt) << " != " << want;
        }
        EXPECT_EQ(bad, 0u);
      }
    }
    EXPECT_TRUE(comm.all_agree(true, stream));
    EXPECT_FALSE(comm.all_agree(rank != world - 1, stream));  // one rank disagrees: false everywhere
    SPARSELLM_CHECK_CUDA(cudaStreamDestroy(stream));
  });  // ~Communicator: finalize + destroy on every rank
}

// Many calls (both buffer parities, epochs that keep counting, every other call on a
// buffer one element off 16-byte alignment) and a captured graph replayed with new
// inputs: every result equals the fp32 sum in rank order rounded once, the same bits
// on every rank.
TEST_P(CommunicatorTest, PeerAllReduceStaysInStepOverCallsAndGraphReplays) {
  const int world = GetParam();
  if (device_count() < world) GTEST_SKIP() << "needs " << world << " GPUs";
  if (!peer_to_peer(world)) GTEST_SKIP() << "the GPUs do not reach each other peer to peer";
  const std::string id = nccl_unique_id();
  const size_t n = 3 * 8192 + 5;  // three decode tokens of hidden 8,192, and a tail
  constexpr int kEagerCalls = 37, kReplays = 9;
  // inputs[call][rank][i]: fresh random fp16 values; results[call][rank][i]: what rank `rank` got
  std::vector<std::vector<std::vector<uint16_t>>> inputs(kEagerCalls + kReplays), results(kEagerCalls + kReplays);
  std::mt19937 rng(20261128);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  for (auto& call : inputs) {
    call.assign(size_t(world), std::vector<uint16_t>(n));
    for (auto& x : call)
      for (auto& v : x) v = to_bits(float(int(uniform(rng) * 512.0f)) / 512.0f, DType::kFloat16);  // exact in fp16
  }
  for (auto& call : results) call.assign(size_t(world), std::vector<uint16_t>(n));
  on_every_rank(world, [&](int rank) {
    Communicator comm(options(rank, world, id));
    ASSERT_TRUE(comm.uses_peer_all_reduce());
    cudaStream_t stream;
    SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    char* base = nullptr;
    SPARSELLM_CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&base), (n + 1) * 2));
    void* buf = base;
    for (int c = 0; c < kEagerCalls; ++c) {
      void* at = c % 2 ? base + 2 : base;
      SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(at, inputs[size_t(c)][size_t(rank)].data(), n * 2, cudaMemcpyHostToDevice,
                                           stream));
      comm.all_reduce_sum(at, n, DType::kFloat16, stream);
      SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(results[size_t(c)][size_t(rank)].data(), at, n * 2,
                                           cudaMemcpyDeviceToHost, stream));
      comm.synchronize(stream, "eager call");
    }
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    SPARSELLM_CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    comm.all_reduce_sum(buf, n, DType::kFloat16, stream);
    SPARSELLM_CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
    SPARSELLM_CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    for (int c = kEagerCalls; c < kEagerCalls + kReplays; ++c) {
      SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(buf, inputs[size_t(c)][size_t(rank)].data(), n * 2, cudaMemcpyHostToDevice,
                                           stream));
      SPARSELLM_CHECK_CUDA(cudaGraphLaunch(exec, stream));
      SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(results[size_t(c)][size_t(rank)].data(), buf, n * 2,
                                           cudaMemcpyDeviceToHost, stream));
      comm.synchronize(stream, "graph replay");
    }
    SPARSELLM_CHECK_CUDA(cudaGraphExecDestroy(exec));
    SPARSELLM_CHECK_CUDA(cudaGraphDestroy(graph));
    SPARSELLM_CHECK_CUDA(cudaFree(base));
    SPARSELLM_CHECK_CUDA(cudaStreamDestroy(stream));
  });
  for (size_t c = 0; c < inputs.size(); ++c) {
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      float sum = 0.0f;  // values of 1/512 steps in [-2, 2]: every partial sum exact in fp32, the result rounded
      for (int r = 0; r < world; ++r) sum += from_bits(inputs[c][size_t(r)][i], DType::kFloat16);
      const uint16_t want = to_bits(sum, DType::kFloat16);
      for (int r = 0; r < world; ++r)
        if (results[c][size_t(r)][i] != want && bad++ < 3)
          ADD_FAILURE() << "call " << c << ", rank " << r << ", i " << i << ": "
                        << from_bits(results[c][size_t(r)][i], DType::kFloat16) << " != " << sum;
    }
    EXPECT_EQ(bad, 0u) << "call " << c;
  }
}

TEST(PeerAllReduceSwitch, TheEnvironmentLeavesEveryAllReduceToNccl) {
  if (device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  const std::string id = nccl_unique_id();
  setenv("SPARSELLM_PEER_ALL_REDUCE", "0", 1);
  on_every_rank(2, [&](int rank) {
    Communicator comm(options(rank, 2, id));
    EXPECT_FALSE(comm.uses_peer_all_reduce());
  });
  unsetenv("SPARSELLM_PEER_ALL_REDUCE");
}

INSTANTIATE_TEST_SUITE_P(World, CommunicatorTest, ::testing::Values(2, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

TEST(CommunicatorFailure, AMissingPeerTimesOutInsteadOfHanging) {
  if (device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  const std::string id = nccl_unique_id();
  const double timeout_s = 2.0;
  std::atomic<bool> rank0_gave_up{false};
  on_every_rank(2, [&](int rank) {
    Communicator comm(options(rank, 2, id, timeout_s));
    cudaStream_t stream;
    SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    void* buf = nullptr;
    SPARSELLM_CHECK_CUDA(cudaMalloc(&buf, 4096 * 2));
    SPARSELLM_CHECK_CUDA(cudaMemsetAsync(buf, 0, 4096 * 2, stream));
    comm.all_reduce_sum(buf, 4096, DType::kFloat16, stream);  // a first, complete all-reduce: connections set up
    comm.synchronize(stream, "warm-up");
    if (rank == 0) {  // rank 1 never joins this one
      comm.all_reduce_sum(buf, 4096, DType::kFloat16, stream);
      const auto start = std::chrono::steady_clock::now();
      EXPECT_THROW(comm.synchronize(stream, "lonely all-reduce"), NcclError);
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_GE(waited, timeout_s);
      EXPECT_LT(waited, timeout_s + 5.0);
      EXPECT_TRUE(comm.failed());
      EXPECT_THROW(comm.all_reduce_sum(buf, 4096, DType::kFloat16, stream), NcclError);  // refuses more work
      rank0_gave_up = true;
    } else {
      while (!rank0_gave_up) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // its buffers stay mapped
    }
    comm.abort();  // both ranks: rank 0's stuck kernel returns
    EXPECT_TRUE(comm.aborted());
    SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(stream));
    cudaGetLastError();
    cudaFree(buf);
    cudaStreamDestroy(stream);
  });
}

}  // namespace
}  // namespace sparsellm
