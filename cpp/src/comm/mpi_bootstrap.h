// The start of a tensor-parallel run, before any communicator exists:
// checking that a checkpoint fits the world (check_tensor_parallel, also
// behind the public tensor_parallel_error), the NCCL unique id, and the MPI
// session (sparsellm/tensor_parallel.h) that broadcasts it under mpirun and
// picks the GPU by local rank:
//
//   rank 0: id = ncclGetUniqueId()  ──MPI_Bcast──▶  every rank: {rank, world, id}
//   local rank = rank within MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)
//                (OMPI_COMM_WORLD_LOCAL_RANK when the split is unavailable)
//   cudaSetDevice(local rank)
#pragma once

#include <string>

#include "sparsellm/tensor_parallel.h"

namespace sparsellm {

// Throws InvalidArgument when `world` does not fit the checkpoint (tp ≠ world,
// rank outside [0, world), heads or FFN size not divisible) and FormatError
// when config.json or this rank's file is missing or unreadable; every
// message names the file. Reads config.json only: no GPU work.
void check_tensor_parallel(const std::string& checkpoint_dir, int rank, int world);

}  // namespace sparsellm
