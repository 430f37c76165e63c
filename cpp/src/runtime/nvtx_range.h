// A scoped NVTX range (header-only nvtx3): names the layers and stages of the
// runtime in Nsight Systems. Ranges are host-side markers; inside a captured
// CUDA graph they mark the capture, not each replay.
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace sparsellm {

class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace sparsellm
