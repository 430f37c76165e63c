// The NCCL communicator between the GPUs of this machine, one thread per GPU
// (as one process per GPU would be under mpirun): the in-place all-reduce sum
// against the host sum, fp16 and bf16, awkward sizes; all_agree; and the failure path —
// a peer that never joins the collective makes the waiting rank give up after
// its timeout (NcclError, failed()) instead of hanging, and abort() releases
// the stuck kernel. Skips with fewer than 2 GPUs.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
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

uint16_t to_bits(float v, DType dt) {  // exact for the small integers used here
  uint32_t f;
  std::memcpy(&f, &v, 4);
  if (dt == DType::kBFloat16) return uint16_t(f >> 16);
  if (v == 0.0f) return 0;
  const uint32_t sign = (f >> 16) & 0x8000u;
  const int exp = int((f >> 23) & 0xFF) - 127 + 15;
  return uint16_t(sign | uint32_t(exp) << 10 | ((f >> 13) & 0x3FF));
}

float from_bits(uint16_t b, DType dt) {
  if (dt == DType::kBFloat16) {
    const uint32_t f = uint32_t(b) << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  }
  const uint32_t sign = b >> 15, exp = (b >> 10) & 0x1F, mant = b & 0x3FF;
  const float mag = exp == 0 ? std::ldexp(float(mant), -24) : std::ldexp(float(mant | 0x400), int(exp) - 25);
  return sign ? -mag : mag;
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

class CommunicatorTest : public ::testing::TestWithParam<int> {};

TEST_P(CommunicatorTest, AllReduceSumMatchesTheHostSum) {
  const int world = GetParam();
  if (device_count() < world) GTEST_SKIP() << "needs " << world << " GPUs";
  const std::string id = nccl_unique_id();
  on_every_rank(world, [&](int rank) {
    Communicator comm(options(rank, world, id));
    EXPECT_EQ(comm.rank(), rank);
    EXPECT_EQ(comm.world(), world);
    cudaStream_t stream;
    SPARSELLM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
      for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(12345), size_t(3) << 20}) {
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

INSTANTIATE_TEST_SUITE_P(World, CommunicatorTest, ::testing::Values(2, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

TEST(CommunicatorFailure, AMissingPeerTimesOutInsteadOfHanging) {
  if (device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  const std::string id = nccl_unique_id();
  const double timeout_s = 2.0;
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
