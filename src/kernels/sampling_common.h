// What the CPU and CUDA samplers share so that they choose the same tokens: the Gumbel noise of
// each (seed, draw, token), and the order-preserving integer key of a float logit.
#pragma once

#include "kernels/random_hash.h"

namespace marlin::sampling {

// Gumbel(0, 1) noise of token i in draw `draw`: -log(-log(u)), u uniform in (0, 1).
MARLIN_HD float gumbel(uint64_t seed, uint64_t draw, int64_t vocab, int64_t i) {
  const float u = random::uniform(seed, draw * static_cast<uint64_t>(vocab) +
                                            static_cast<uint64_t>(i), 0);
  return -logf(-logf(u));
}

// Unsigned key with the order of the floats (negative values below positive ones).
MARLIN_HD uint32_t order_key(float f) {
  const uint32_t u = float_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace marlin::sampling
