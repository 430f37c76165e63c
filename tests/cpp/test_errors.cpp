// The check macros turn failed statuses into typed exceptions that name the statement.
#include <gtest/gtest.h>

#include <string>

#include "comm/check.h"
#include "common/check.h"
#include "sparsellm/device.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"

namespace sparsellm {
namespace {

TEST(Errors, CudaStatusBecomesTypedException) {
  try {
    SPARSELLM_CHECK_CUDA(cudaErrorInvalidValue);
    FAIL() << "no exception";
  } catch (const CudaError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaErrorInvalidValue"), std::string::npos) << what;
    EXPECT_NE(what.find("test_errors.cpp"), std::string::npos) << what;
  }
}

TEST(Errors, AllocationFailureIsOutOfMemory) {
  EXPECT_THROW(SPARSELLM_CHECK_CUDA(cudaErrorMemoryAllocation), OutOfMemory);
}

TEST(Errors, CublasStatusBecomesTypedException) {
  try {
    SPARSELLM_CHECK_CUBLAS(CUBLAS_STATUS_INVALID_VALUE);
    FAIL() << "no exception";
  } catch (const CublasError& e) {
    EXPECT_NE(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE"), std::string::npos) << e.what();
  }
}

TEST(Errors, NcclStatusBecomesTypedException) {
  try {
    SPARSELLM_CHECK_NCCL(ncclInvalidArgument);
    FAIL() << "no exception";
  } catch (const NcclError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ncclInvalidArgument"), std::string::npos) << what;
    EXPECT_NE(what.find("invalid argument"), std::string::npos) << what;
  }
}

TEST(Errors, ArgumentCheckNamesTheProblem) {
  try {
    SPARSELLM_CHECK_ARG(1 + 1 == 3, "n must be ", 3, ", got ", 2);
    FAIL() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "n must be 3, got 2");
  }
}

TEST(Errors, DenseGemmRejectsBadShapesBeforeTouchingTheGpu) {
  DenseGemmParams p;
  p.n = 0;
  p.m = 4;
  p.k = 4;
  EXPECT_THROW(dense_gemm(p, nullptr), InvalidArgument);
}

TEST(Errors, PlanOfRangesRejectsRangesThatDoNotCoverTheTiles) {
  // 256 × 128: 2 × 2 tiles.
  EXPECT_THROW(spmm_plan_of_ranges({0, 2, 3}, 256, 128), InvalidArgument);     // ends before the last tile
  EXPECT_THROW(spmm_plan_of_ranges({1, 2, 4}, 256, 128), InvalidArgument);     // starts after the first
  EXPECT_THROW(spmm_plan_of_ranges({0, 3, 2, 4}, 256, 128), InvalidArgument);  // decreases
  EXPECT_THROW(spmm_plan_of_ranges({0, 2, 2, 4}, 256, 128), InvalidArgument);  // an empty block, then a used one
  const std::vector<StreamKBlock> plan = spmm_plan_of_ranges({0, 1, 3, 4, 4}, 256, 128);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[1].first_row_lead, 0);  // row 0: blocks 0 and 1
  EXPECT_EQ(plan[1].first_row_parts, 2);
  EXPECT_EQ(plan[1].last_row_lead, 1);  // row 1: blocks 1 and 2
  EXPECT_EQ(plan[1].last_row_parts, 2);
  EXPECT_EQ(plan[3].unit_begin, plan[3].unit_end);
}

// A norm fold (SpmmNormFold) that is incomplete, too wide or aliased is an
// InvalidArgument naming it, before the GPU is touched.
TEST(Errors, SpmmRejectsIncompleteOrWideNormFolds) {
  auto* fake = reinterpret_cast<void*>(256);
  SpmmParams p;
  p.n = 4;
  p.weight.m = 256;
  p.weight.k = 128;
  p.weight.format = SparseFormat::kSplit24;
  p.x = fake;
  p.y = static_cast<char*>(fake) + 4096;
  p.weight.words = p.weight.tile_offsets = static_cast<const uint32_t*>(fake);
  p.plan = static_cast<const StreamKBlock*>(fake);
  p.plan_blocks = 1;
  p.workspace = fake;
  p.workspace_bytes = spmm_workspace_bytes(256, kSpmmNormFoldMaxRows + 1, 1);
  float* sums = reinterpret_cast<float*>(8192);
  const SpmmNormOut out{fake, static_cast<char*>(fake) + 65536, sums};
  auto expect_rejected = [&](const SpmmParams& q, const char* why) {
    try {
      spmm(q, nullptr);
      ADD_FAILURE() << why << ": no exception";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("norm fold"), std::string::npos) << why << ": " << e.what();
    }
  };
  SpmmParams q = p;
  q.norm.out = out;
  q.n = kSpmmNormFoldMaxRows + 1;
  expect_rejected(q, "wider than a decode step");
  q = p;
  q.norm.out = out;
  q.norm.out.sumsq = nullptr;
  expect_rejected(q, "out part without its sums");
  q = p;
  q.norm.out = out;
  q.norm.in = {sums, 1e-5f};
  expect_rejected(q, "in and out on one sums array");
  q = p;
  q.norm.out = out;
  q.norm.out.normed = q.y;
  expect_rejected(q, "normed on y");
  q = p;
  q.norm.in = {sums, -1.0f};
  expect_rejected(q, "negative eps");
}

TEST(Errors, NoGpuIsADeviceErrorNotACrash) {
  if (device_count() > 0) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(current_device(), DeviceError);
}

}  // namespace
}  // namespace sparsellm
