// Tensor-parallel launch checks that need no GPU: check_tensor_parallel /
// tensor_parallel_error on a config.json written here, the Communicator's
// argument checks (before any NCCL call) and the timeout setting.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "comm/communicator.h"
#include "comm/mpi_bootstrap.h"
#include "sparsellm/error.h"
#include "sparsellm/tensor_parallel.h"

namespace sparsellm {
namespace {

namespace fs = std::filesystem;

// A checkpoint directory with config.json (tp, heads, ffn) and empty rank files.
fs::path make_checkpoint(const std::string& name, int tp, int heads, int ffn, bool all_files = true) {
  const fs::path dir = fs::temp_directory_path() / ("sparsellm-tp-check-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{\"format_version\": 2, \"architecture\": \"opt\", \"tp\": " << tp
                                     << ", \"model_config\": {\"num_attention_heads\": " << heads
                                     << ", \"ffn_dim\": " << ffn << "}}";
  for (int r = 0; r < tp; ++r)
    if (all_files || r != tp - 1)
      std::ofstream(dir / ("rank" + std::to_string(r) + "-of-" + std::to_string(tp) + ".safetensors")) << "x";
  return dir;
}

TEST(TensorParallelCheck, AcceptsAMatchingLaunch) {
  const fs::path dir = make_checkpoint("ok", 4, 12, 3072);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(tensor_parallel_error(dir.string(), r, 4), "");
  fs::remove_all(dir);
}

TEST(TensorParallelCheck, WrongWorldSizeIsInvalidArgument) {
  const fs::path dir = make_checkpoint("world", 2, 12, 3072);
  try {
    check_tensor_parallel(dir.string(), 0, 4);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("config.json"), std::string::npos) << m;
    EXPECT_NE(m.find("tp = 2 ranks, but 4 processes run it; run it with mpirun -n 2"), std::string::npos) << m;
  }
  EXPECT_NE(tensor_parallel_error(dir.string(), 0, 1).find("1 process runs it"), std::string::npos);
  EXPECT_NE(tensor_parallel_error(dir.string(), 2, 2).find("rank 2 is outside [0, 2)"), std::string::npos);
  fs::remove_all(dir);
}

TEST(TensorParallelCheck, IndivisibleHeadsOrFfn) {
  const fs::path heads = make_checkpoint("heads", 2, 5, 3072);
  EXPECT_NE(tensor_parallel_error(heads.string(), 0, 2).find("num_attention_heads = 5 does not divide by the world "
                                                             "size 2"),
            std::string::npos);
  const fs::path ffn = make_checkpoint("ffn", 4, 12, 702);
  EXPECT_NE(tensor_parallel_error(ffn.string(), 1, 4).find("FFN size = 702"), std::string::npos);
  fs::remove_all(heads);
  fs::remove_all(ffn);
}

TEST(TensorParallelCheck, MissingShardIsFormatErrorNamingTheFile) {
  const fs::path dir = make_checkpoint("shard", 2, 12, 3072, /*all_files=*/false);
  EXPECT_EQ(tensor_parallel_error(dir.string(), 0, 2), "");
  try {
    check_tensor_parallel(dir.string(), 1, 2);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("rank1-of-2.safetensors: no such file: the shard of rank 1 of 2 is missing"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(check_tensor_parallel((dir / "absent").string(), 0, 1), FormatError);
  fs::remove_all(dir);
}

TEST(TensorParallelCheck, CommunicatorChecksItsArguments) {
  TensorParallelOptions o;
  o.rank = 2;
  o.world = 2;
  o.nccl_id = std::string(kNcclIdBytes, '\0');
  EXPECT_THROW(Communicator{o}, InvalidArgument);  // rank outside [0, world)
  o.rank = 0;
  o.nccl_id = "short";
  EXPECT_THROW(Communicator{o}, InvalidArgument);  // not an NCCL id
}

TEST(TensorParallelCheck, TimeoutSetting) {
  EXPECT_EQ(comm_timeout_s(5.0), 5.0);
  ::unsetenv("SPARSELLM_COMM_TIMEOUT_S");
  EXPECT_EQ(comm_timeout_s(0.0), 120.0);
  ::setenv("SPARSELLM_COMM_TIMEOUT_S", "7.5", 1);
  EXPECT_EQ(comm_timeout_s(0.0), 7.5);
  ::setenv("SPARSELLM_COMM_TIMEOUT_S", "soon", 1);
  EXPECT_THROW(comm_timeout_s(0.0), InvalidArgument);
  ::unsetenv("SPARSELLM_COMM_TIMEOUT_S");
}

TEST(TensorParallelCheck, NcclUniqueIdHasItsSize) {
  EXPECT_EQ(nccl_unique_id().size(), size_t(kNcclIdBytes));  // no GPU needed
}

}  // namespace
}  // namespace sparsellm
