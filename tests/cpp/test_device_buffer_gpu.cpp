// DeviceBuffer: upload / zero round trips and moves. Skips without a GPU.
// (The out-of-memory path is tested from Python, tests/python/test_linear_gpu.py,
// outside compute-sanitizer, which reports every failed CUDA call.)
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "common/check.h"
#include "runtime/device_buffer.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

TEST(DeviceBuffer, UploadZeroAndMove) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  std::vector<uint32_t> host(1001);  // [1001], an odd size
  std::iota(host.begin(), host.end(), 7u);
  DeviceBuffer a(host.size() * sizeof(uint32_t), "test buffer");
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(a.bytes(), host.size() * sizeof(uint32_t));
  a.upload(host.data(), a.bytes(), nullptr);
  DeviceBuffer b = std::move(a);  // ownership moves, the pointer does not
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.bytes(), 0u);
  std::vector<uint32_t> back(host.size());
  SPARSELLM_CHECK_CUDA(cudaMemcpy(back.data(), b.data(), b.bytes(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);
  b.zero(nullptr);
  SPARSELLM_CHECK_CUDA(cudaMemcpy(back.data(), b.data(), b.bytes(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, std::vector<uint32_t>(host.size(), 0u));
  EXPECT_THROW(b.upload(host.data(), b.bytes() + 4, nullptr), InvalidArgument);

  DeviceBuffer empty(0, "nothing");
  EXPECT_EQ(empty.data(), nullptr);
  empty.upload(nullptr, 0, nullptr);
  empty.zero(nullptr);
}

}  // namespace
}  // namespace sparsellm
