// Uploading checkpoint tensors to the device (load time only).
//
// The copies are enqueued with cudaMemcpyAsync on `stream` straight from the
// checkpoint's read-only mapping (pageable memory: each call returns once its
// source has been staged, so the Checkpoint may be closed afterwards). The
// caller synchronizes `stream` once after loading everything.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"

namespace sparsellm {

// The dense tensor `name` of this rank ([rows, cols] or [n], the checkpoint's
// dtype) in a new device buffer. Throws FormatError naming the file and tensor
// when the rank holds no such tensor, or holds it in another format or dtype.
DeviceBuffer upload_dense(const Checkpoint& checkpoint, const std::string& name, cudaStream_t stream);

}  // namespace sparsellm
