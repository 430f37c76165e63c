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

#define SPARSELLM_CHECK_NCCL(stmt)                                               \
  do {                                                                           \
    ncclResult_t sparsellm_status_ = (stmt);                                     \
    if (sparsellm_status_ != ncclSuccess)                                        \
      ::sparsellm::detail::throw_nccl(sparsellm_status_, #stmt, __FILE__, __LINE__); \
  } while (0)

#if defined(SPARSELLM_HAVE_MPI)
#define SPARSELLM_CHECK_MPI(stmt)                                                \
  do {                                                                           \
    int sparsellm_status_ = (stmt);                                              \
    if (sparsellm_status_ != MPI_SUCCESS)                                        \
      ::sparsellm::detail::throw_mpi(sparsellm_status_, #stmt, __FILE__, __LINE__); \
  } while (0)
#endif
