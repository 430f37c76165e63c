// Per-step bookkeeping of the generation loop (see decode_bookkeeping.h).
//
// One block; thread b owns sequence b (the batch is at most 1024), so no two
// threads touch the same sequence and the only cross-thread result, "all
// finished", is a block-wide AND (__syncthreads_and).
#include "runtime/decode_bookkeeping.h"

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

__global__ void decode_bookkeeping_kernel(BookkeepingParams p) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  const int b = threadIdx.x;
  bool finished = true;  // threads past the batch do not hold the block back
  if (b < p.batch) {
    int32_t reason = p.finish_reason[b];
    if (reason == kDecodeRunning) {
      const int32_t token = p.next_token[b];
      const int32_t count = p.generated[b];
      p.out_tokens[int64_t(b) * p.out_stride + count] = token;
      const int32_t generated = count + 1;
      p.generated[b] = generated;
      const int32_t eos = *p.eos_token;
      if (eos >= 0 && token == eos)
        reason = kDecodeEos;
      else if (generated >= *p.max_new_tokens)
        reason = kDecodeLength;
      p.finish_reason[b] = reason;
      p.current_token[b] = token;
      p.position[b] = p.prompt_len[b] + generated - 1;
    }
    finished = reason != kDecodeRunning;
  }
  const int all = __syncthreads_and(finished ? 1 : 0);
  if (threadIdx.x == 0) {
    *p.step += 1;
    *p.all_finished = all;
  }
}

}  // namespace

void decode_bookkeeping(const BookkeepingParams& params, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(params.batch >= 1 && params.batch <= kMaxBookkeepingBatch,
                      "decode_bookkeeping: batch must be in [1, ", kMaxBookkeepingBatch, "], got ", params.batch);
  SPARSELLM_CHECK_ARG(params.next_token && params.prompt_len && params.max_new_tokens && params.eos_token &&
                          params.current_token && params.position && params.generated && params.finish_reason &&
                          params.out_tokens && params.step && params.all_finished,
                      "decode_bookkeeping: a device pointer is null");
  SPARSELLM_CHECK_ARG(params.out_stride >= 1, "decode_bookkeeping: out_stride must be positive");
  const int threads = (params.batch + 31) / 32 * 32;
  kernels::launch_chained("decode_bookkeeping_kernel", decode_bookkeeping_kernel, 1, threads, 0, stream, params);
}

}  // namespace sparsellm
