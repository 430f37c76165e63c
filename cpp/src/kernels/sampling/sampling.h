// Next-token choice from the LM head's logits, per sequence:
//
//   temperature ≤ 0:  greedy, argmax_v logits[b, v] (lowest index on ties)
//   else:             p_v ∝ exp(logits[b, v] / temperature), restricted to the
//                     top_k most likely tokens (top_k ≤ 0: no limit) and then to
//                     the smallest set of most likely tokens whose mass reaches
//                     top_p (top_p ≥ 1: no limit), renormalized, and sampled with
//                     a uniform draw from Philox(seed[b], counter = *step).
//
// Sampling parameters are per sequence and live in device memory, as does
// the step counter, so a captured decode step replays with fresh draws. The
// same (seed, step, logits) always give the same token.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm {

struct SamplingParams {
  const void* logits = nullptr;     // [batch, vocab], row stride logits_stride elements
  int64_t batch = 0, vocab = 0, logits_stride = 0;
  const float* temperature = nullptr;  // [batch]
  const int32_t* top_k = nullptr;      // [batch]
  const float* top_p = nullptr;        // [batch]
  const uint64_t* seed = nullptr;      // [batch]
  const int32_t* step = nullptr;       // [1] device counter
  int32_t* next_token = nullptr;       // [batch] out
  DType dtype = DType::kFloat16;
};

void sample_tokens(const SamplingParams& params, cudaStream_t stream);

}  // namespace sparsellm
