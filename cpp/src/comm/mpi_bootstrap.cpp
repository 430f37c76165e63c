// Tensor-parallel bootstrap: checkpoint vs world checks, the NCCL id and the
// MPI session (see mpi_bootstrap.h and sparsellm/tensor_parallel.h).
#include "comm/mpi_bootstrap.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include "comm/check.h"
#include "common/check.h"
#include "runtime/checkpoint.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

using nlohmann::json;

int64_t config_int(const json& c, const char* key, int64_t fallback) {
  if (!c.contains(key) || !c.at(key).is_number_integer()) return fallback;
  return c.at(key).get<int64_t>();
}

}  // namespace

void check_tensor_parallel(const std::string& dir, int rank, int world) {
  namespace fs = std::filesystem;
  const std::string config_file = (fs::path(dir) / "config.json").string();
  SPARSELLM_CHECK_ARG(world >= 1, "tensor parallelism: world size must be at least 1, got ", world);
  SPARSELLM_CHECK_ARG(rank >= 0 && rank < world, "tensor parallelism: rank ", rank, " is outside [0, ", world, ")");
  std::ifstream in(config_file);
  if (!in) throw FormatError(config_file + ": cannot be opened (not a sparsellm checkpoint directory?)");
  json config;
  try {
    in >> config;
  } catch (const std::exception& e) {
    throw FormatError(detail::concat(config_file, ": not valid JSON: ", e.what()));
  }
  if (!config.is_object() || !config.contains("tp") || !config.at("tp").is_number_integer() ||
      config.at("tp").get<int64_t>() < 1)
    throw FormatError(config_file + ": field tp must be a positive integer");
  const int64_t tp = config.at("tp").get<int64_t>();
  if (tp != world)
    throw InvalidArgument(detail::concat(config_file, ": the checkpoint is split for tensor parallelism over tp = ",
                                         tp, " ranks, but ", world, world == 1 ? " process runs" : " processes run",
                                         " it; run it with ", tp == 1 ? std::string("one process")
                                                                      : detail::concat("mpirun -n ", tp),
                                         " or convert it with --tp ", world));
  const json empty = json::object();
  const json& mc = config.contains("model_config") && config.at("model_config").is_object()
                       ? config.at("model_config") : empty;
  const int64_t heads = config_int(mc, "num_attention_heads", 0);
  const int64_t kv_heads = config_int(mc, "num_key_value_heads", heads);
  const int64_t ffn = config_int(mc, "ffn_dim", config_int(mc, "intermediate_size", 0));
  for (auto [what, n] : {std::pair<const char*, int64_t>{"num_attention_heads", heads},
                         {"num_key_value_heads", kv_heads}, {"FFN size", ffn}})
    if (n % world != 0)
      throw InvalidArgument(detail::concat(config_file, ": ", what, " = ", n, " does not divide by the world size ",
                                           world, "; tensor parallelism splits it evenly over the ranks"));
  if (is_generated_checkpoint(config)) return;  // no rank files: every rank draws its shard
  const std::string file = detail::concat("rank", rank, "-of-", tp, ".safetensors");
  const fs::path path = fs::path(dir) / file;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw FormatError(detail::concat(path.string(), ": no such file: the shard of rank ", rank, " of ", tp,
                                     " is missing from the checkpoint"));
}

std::string tensor_parallel_error(const std::string& dir, int rank, int world) {
  try {
    check_tensor_parallel(dir, rank, world);
    return std::string();
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::string nccl_unique_id() {
  ncclUniqueId id;
  SPARSELLM_CHECK_NCCL(ncclGetUniqueId(&id));
  return std::string(reinterpret_cast<const char*>(&id), sizeof(id));
}

#if defined(SPARSELLM_HAVE_MPI)

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  SPARSELLM_CHECK_MPI(MPI_Initialized(&initialized));
  if (!initialized) {
    SPARSELLM_CHECK_MPI(MPI_Init(argc, argv));
    owns_ = true;
  }
  // Errors come back as codes (and become MpiError) instead of aborting the job.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  SPARSELLM_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  SPARSELLM_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_));
  MPI_Comm local = MPI_COMM_NULL;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local) == MPI_SUCCESS &&
      local != MPI_COMM_NULL) {
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
  } else if (const char* env = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {
    local_rank_ = std::atoi(env);
  } else {
    local_rank_ = rank_;
  }
}

MpiSession::~MpiSession() {
  int finalized = 0;
  if (owns_ && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
}

TensorParallelOptions MpiSession::tensor_parallel() const {
  TensorParallelOptions o;
  o.rank = rank_;
  o.world = world_;
  // Rank 0 may fail to create the id: broadcast a status first so that no rank waits for an id that never comes.
  std::string id(kNcclIdBytes, '\0');
  std::string error;
  if (rank_ == 0) {
    try {
      id = nccl_unique_id();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int failed = error.empty() ? 0 : 1;
  SPARSELLM_CHECK_MPI(MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD));
  if (failed) throw NcclError(rank_ == 0 ? error : std::string("rank 0 could not create the NCCL id"));
  SPARSELLM_CHECK_MPI(MPI_Bcast(id.data(), kNcclIdBytes, MPI_BYTE, 0, MPI_COMM_WORLD));
  o.nccl_id = id;
  const int devices = device_count();  // 0 without a driver or GPU: reported below
  if (local_rank_ >= devices)
    throw DeviceError(detail::concat("rank ", rank_, " has local rank ", local_rank_, " but this host has ", devices,
                                     " GPU(s): start at most one process per GPU"));
  o.device = local_rank_;
  SPARSELLM_CHECK_CUDA(cudaSetDevice(o.device));
  return o;
}

std::string MpiSession::gather_errors(const std::string& error) const {
  int length = int(error.size());
  std::vector<int> lengths(size_t(world_), 0);
  SPARSELLM_CHECK_MPI(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<int> offsets(size_t(world_), 0);
  int total = 0;
  for (int r = 0; r < world_; ++r) offsets[size_t(r)] = total, total += lengths[size_t(r)];
  if (total == 0) return std::string();
  std::string all(size_t(total), '\0');
  SPARSELLM_CHECK_MPI(MPI_Allgatherv(error.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(),
                                     MPI_CHAR, MPI_COMM_WORLD));
  std::string out;
  for (int r = 0; r < world_; ++r)
    if (lengths[size_t(r)] > 0)
      out += detail::concat(out.empty() ? "" : "\n", "rank ", r, ": ",
                            all.substr(size_t(offsets[size_t(r)]), size_t(lengths[size_t(r)])));
  return out;
}

void MpiSession::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return
}

#else  // no MPI in this build

namespace {
[[noreturn]] void no_mpi() {
  throw MpiError("this libsparsellm was built without MPI (install an MPI, e.g. libopenmpi-dev, and rebuild); "
                 "pass TensorParallelOptions yourself or use the Python launcher (mpi4py)");
}
}  // namespace

MpiSession::MpiSession(int*, char***) { no_mpi(); }
MpiSession::~MpiSession() = default;
TensorParallelOptions MpiSession::tensor_parallel() const { no_mpi(); }
std::string MpiSession::gather_errors(const std::string&) const { no_mpi(); }
void MpiSession::abort(int) const { no_mpi(); }

#endif

}  // namespace sparsellm
