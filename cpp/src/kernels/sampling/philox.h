// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011; the generator of Random123 and of curand's Philox state): a
// counter-based generator, 128-bit counter and 64-bit key → 128 random bits,
// ten rounds of two 32 × 32 → 64-bit multiplies. Host and device.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SPARSELLM_HD __host__ __device__ __forceinline__
#else
#define SPARSELLM_HD inline
#endif

namespace sparsellm {

struct Philox4x32 {
  uint32_t v[4];
};

SPARSELLM_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kW0;
      key1 += kW1;
    }
    const uint64_t p0 = uint64_t(kM0) * ctr.v[0], p1 = uint64_t(kM1) * ctr.v[2];
    ctr = Philox4x32{{uint32_t(p1 >> 32) ^ ctr.v[1] ^ key0, uint32_t(p1), uint32_t(p0 >> 32) ^ ctr.v[3] ^ key1,
                      uint32_t(p0)}};
  }
  return ctr;
}

// The 64 random bits of sampling draw (seed, step): counter (step, 0, 0, 0),
// key (low, high 32 bits of seed); the first two output words, high word first.
SPARSELLM_HD uint64_t philox_draw64(uint64_t seed, uint32_t step) {
  const Philox4x32 r = philox4x32_10(Philox4x32{{step, 0u, 0u, 0u}}, uint32_t(seed), uint32_t(seed >> 32));
  return (uint64_t(r.v[0]) << 32) | r.v[1];
}

}  // namespace sparsellm

#undef SPARSELLM_HD
