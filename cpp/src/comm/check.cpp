#include "comm/check.h"

namespace sparsellm::detail {

void throw_nccl(ncclResult_t status, const char* stmt, const char* file, int line) {
  std::string msg = concat("NCCL error ", int(status), " (", ncclGetErrorString(status), ") in `", stmt, "` at ",
                           file, ":", line);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && last[0] != '\0') msg += concat(": ", last);
  throw NcclError(msg);
}

#if defined(SPARSELLM_HAVE_MPI)
void throw_mpi(int status, const char* stmt, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(status, text, &length) != MPI_SUCCESS) text[0] = '\0';
  throw MpiError(concat("MPI error ", status, " (", text, ") in `", stmt, "` at ", file, ":", line));
}
#endif

}  // namespace sparsellm::detail
