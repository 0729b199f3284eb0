// Counter-based random numbers: value i of stream `seed` is a pure function of (seed, i), so any
// thread split gives the same tensor, and the CPU and CUDA backends give the same uniforms (normals
// agree to the last bits of logf/cosf).
#pragma once

#include <cmath>
#include <cstdint>

#include "marlin/dtype.h"

namespace marlin::random {

MARLIN_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in (0, 1), from the top 24 bits.
MARLIN_HD float uniform(uint64_t seed, uint64_t index, uint32_t lane) {
  const uint64_t bits = splitmix64(seed * 0x2545f4914f6cdd1dull + index * 2 + lane);
  return (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller on two uniforms of the same index.
MARLIN_HD float normal(uint64_t seed, uint64_t index) {
  const float u1 = uniform(seed, index, 0), u2 = uniform(seed, index, 1);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

}  // namespace marlin::random
