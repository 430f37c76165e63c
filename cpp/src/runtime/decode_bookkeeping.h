// Per-step bookkeeping of the generation loop, on the device, after sampling:
//
//   for each sequence b that has not finished:
//     out_tokens[b, generated[b]] = next_token[b];  generated[b] += 1
//     finish_reason[b] = kDecodeEos     if next_token[b] == eos_token (eos_token ≥ 0)
//                      = kDecodeLength else if generated[b] == *max_new_tokens
//     current_token[b] = next_token[b]                       (input of the next step)
//     position[b]      = prompt_len[b] + generated[b] − 1    (its position)
//   *step += 1;  *all_finished = every sequence has finished
//
// A finished sequence keeps its token and position, so the steps that still
// run for it (the batch is decoded as a whole) rewrite the same cache entry
// and never reach past prompt_len + max_new_tokens − 1. Everything lives in
// device memory: the kernel is part of the captured decode step, and the
// host learns of the end of generation only through a lagging asynchronous
// copy of all_finished.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsellm {

enum DecodeStatus : int32_t { kDecodeRunning = 0, kDecodeEos = 1, kDecodeLength = 2 };

struct BookkeepingParams {
  const int32_t* next_token = nullptr;      // [batch] sampled this step
  const int32_t* prompt_len = nullptr;      // [batch]
  const int32_t* max_new_tokens = nullptr;  // [1]
  const int32_t* eos_token = nullptr;       // [1]; < 0: never stop at a token
  int32_t* current_token = nullptr;         // [batch]
  int32_t* position = nullptr;              // [batch]
  int32_t* generated = nullptr;             // [batch]
  int32_t* finish_reason = nullptr;         // [batch] DecodeStatus
  int32_t* out_tokens = nullptr;            // [batch, out_stride]
  int64_t out_stride = 0;                   // ≥ *max_new_tokens
  int32_t* step = nullptr;                  // [1] sampling counter
  int32_t* all_finished = nullptr;          // [1]
  int32_t batch = 0;                        // 1 … 1024
};

constexpr int32_t kMaxBookkeepingBatch = 1024;

void decode_bookkeeping(const BookkeepingParams& params, cudaStream_t stream);

}  // namespace sparsellm
