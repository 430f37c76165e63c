// Status checks for the communication libraries: a failed NCCL or MPI call
// becomes NcclError / MpiError naming the statement, file and line (the CUDA
// and cuBLAS checks are in common/check.h).
#pragma once

#include <nccl.h>

#include "common/check.h"

#if defined(SPARSELLM_HAVE_MPI)
#include <mpi.h>
#endif

namespace sparsellm::detail {

[[noreturn]] void throw_nccl(ncclResult_t status, const char* stmt, const char* file, int line);
#if defined(SPARSELLM_HAVE_MPI)
[[noreturn]] void throw_mpi(int status, const char* stmt, const char* file, int line);
#endif

}  // namespace sparsellm::detail

#define SPARSELLM_CHECK_NCCL(stmt) SPARSELLM_CHECK_STATUS(stmt, ncclSuccess, ::sparsellm::detail::throw_nccl)
#if defined(SPARSELLM_HAVE_MPI)
#define SPARSELLM_CHECK_MPI(stmt) SPARSELLM_CHECK_STATUS(stmt, MPI_SUCCESS, ::sparsellm::detail::throw_mpi)
#endif
