// Code -> float decoding of the three formats for the CUDA kernels that read the canonical
// packed layout one 32-bit word at a time (gemm_q.cu's split-K GEMV, the MoE kernels): a code's
// bits placed into an f32's sign/exponent/mantissa fields give the value times a power of two,
// which the kernels fold into the staged activations (a_prescale) and the scales (s_prescale);
// and the 16-byte streaming load of a thread's packed words.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemm_q_tile.cuh"
#include "marlin/quant.h"

namespace marlin::cuda::quant_detail {

template <QuantFormat F>
struct Codec;

// E2M1 nibble s.e1e0.m -> f32 bits s | e1e0 << 23 | m << 22: the value times 2^-126.
template <>
struct Codec<QuantFormat::fp4_e2m1> {
  static constexpr int P = 8;
  static constexpr float a_prescale = 9.223372036854775808e18f;  // 2^63
  static constexpr float s_prescale = 9.223372036854775808e18f;  // 2^63
  template <int J>
  __device__ __forceinline__ static float decode(uint32_t q) {
    constexpr int sign_shift = 28 - 4 * J;
    const uint32_t body = (22 - 4 * J >= 0) ? (q << (22 - 4 * J >= 0 ? 22 - 4 * J : 0))
                                            : (q >> (4 * J - 22 > 0 ? 4 * J - 22 : 0));
    return __uint_as_float(((q << sign_shift) & 0x80000000u) | (body & 0x01c00000u));
  }
  __device__ __forceinline__ static float scaled(float code_value, float s) { return code_value * s; }
};

// E4M3 byte s.eeee.mmm -> f32 bits s | eeee.mmm << 20: the value times 2^-120.
template <>
struct Codec<QuantFormat::fp8_e4m3> {
  static constexpr int P = 4;
  static constexpr float a_prescale = 1.152921504606846976e18f;  // 2^60
  static constexpr float s_prescale = 1.152921504606846976e18f;  // 2^60
  template <int J>
  __device__ __forceinline__ static float decode(uint32_t q) {
    constexpr int sign_shift = 24 - 8 * J;
    const uint32_t body = (20 - 8 * J >= 0) ? (q << (20 - 8 * J >= 0 ? 20 - 8 * J : 0))
                                            : (q >> (8 * J - 20 > 0 ? 8 * J - 20 : 0));
    return __uint_as_float(((q << sign_shift) & 0x80000000u) | (body & 0x07f00000u));
  }
  __device__ __forceinline__ static float scaled(float code_value, float s) { return code_value * s; }
};

// INT2 code c -> f32 bits 0x4b000000 | c, i.e. 2^23 + c; subtracting 2^23 gives c exactly.
template <>
struct Codec<QuantFormat::int2> {
  static constexpr int P = 16;
  static constexpr float a_prescale = 1.0f;
  static constexpr float s_prescale = 1.0f;
  template <int J>
  __device__ __forceinline__ static float decode(uint32_t q) {
    return __uint_as_float(0x4b000000u | ((q >> (2 * J)) & 3u));
  }
  __device__ __forceinline__ static float scaled(float code_value, float s) {
    return fmaf(code_value - 8388608.0f, s, -1.5f * s);  // (c - 1.5) * s, rounded once
  }
};

// w[j] = value of code j of word q times scale s (both with the codec's prescale).
template <QuantFormat F, int J = 0>
__device__ __forceinline__ void decode_word(uint32_t q, float s, float* w) {
  if constexpr (J < Codec<F>::P) {
    w[J] = Codec<F>::scaled(Codec<F>::template decode<J>(q), s);
    decode_word<F, J + 1>(q, s, w);
  }
}

template <int CPT>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t (&w)[CPT]) {
  if constexpr (CPT == 4) {
    // Streamed once: kept out of L1, and first out of L2.
    const uint4 v = tile::ldg_nc_policy(p, tile::weight_l2_policy());
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
  } else {
#pragma unroll
    for (int c = 0; c < CPT; ++c) w[c] = __ldg(p + c);
  }
}

}  // namespace marlin::cuda::quant_detail
