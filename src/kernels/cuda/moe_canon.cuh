// The MoE experts' canonical layout (DESIGN.md) seen by the tensor cores: shared by the decode
// kernels (moe_decode_mma.cu, one token a B column) and the grouped prompt kernels
// (moe_grouped_mma.cu, up to 8 tokens of one expert a B column group).
//
// Lane (g, c) of a warp loads, for its 8 adjacent columns 8g..8g+7, the packed words of rows
// 8c .. 8c + 7 of every 32-row unit of K (two 16-byte loads per unit for FP4/INT2, four for
// FP8), so a warp reads a unit's 64 columns fully coalesced, with no repacking. The mma runs with
// swapped operands: the weights are A (16 columns x 16 k: columns 8g + 2t and 8g + 2t + 1 of lane
// g) and the tokens are the columns of B, token n held by lanes g == n. Inside a unit the mma's k
// order is permuted (k = 8c + 2 step + h + 4e, the same for weights and activations), so that a
// register pair is nibbles (u, u + 4) of one word: a few shifts and masks, no conversions. The
// accumulator of lane (g, c) then holds columns 8g + 2t (i = 0, 1) and 8g + 2t + 1 (i = 2, 3)
// for tokens 2c (i = 0, 2) and 2c + 1 (i = 1, 3).
#pragma once

#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/moe_common.cuh"

namespace marlin::cuda::moe_canon {

using tile::kBf16Prescale;
using tile::mma_16816;

constexpr int kTileN = 64;
constexpr int kMaxSpanUnits = 4;  // a task covers at most 128 rows of K
constexpr int kUnitK = 32;

// The canonical layout seen by one lane of a 32-row unit: packed rows per unit, the row of the
// lane's first word, the words per column it loads, and the decode of register pair u (values
// k = 8c + u and 8c + u + 4) into an f16x2 of the value times 1 / kScale.
template <QuantFormat F>
struct Canon;

template <>
struct Canon<QuantFormat::fp4_e2m1> {
  static constexpr int kRowsPerUnit = 4, kWords = 1;
  static constexpr float kScale = 16384.0f;  // the placed bits are the value times 2^-14
  __device__ static int row(int c) { return c; }
  __device__ static uint32_t prepare(uint32_t q, int) { return q; }
  // Nibble u (bits 4u..4u+3) to the low half, nibble u + 4 to the high half: sign to bit 15/31,
  // magnitude (e1 e0 m) to bits 11..9 / 27..25.
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t q = w[0];
    constexpr int mag = 9 - 4 * U, sign = 12 - 4 * U;
    const uint32_t m = mag >= 0 ? q << mag : q >> -mag;
    return ((q << sign) & 0x80008000u) | (m & 0x0e000e00u);
  }
};

template <>
struct Canon<QuantFormat::fp8_e4m3> {
  static constexpr int kRowsPerUnit = 8, kWords = 2;
  static constexpr float kScale = 1.0f;  // hardware conversion: exact values
  __device__ static int row(int c) { return 2 * c; }
  __device__ static uint32_t prepare(uint32_t q, int) { return q; }
  // Byte u of the row-2c word (k = 8c + u) and of the row-2c+1 word (k = 8c + u + 4).
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t two = __byte_perm(w[0], w[1], U | ((U + 4) << 4));
    uint32_t out;
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}" : "=r"(out) : "r"(two));
    return out;
  }
};

template <>
struct Canon<QuantFormat::int2> {
  static constexpr int kRowsPerUnit = 2, kWords = 1;
  static constexpr float kScale = 2.0f;  // 2 (c - 1.5) is decoded
  __device__ static int row(int c) { return c / 2; }
  // Lanes c = 2, 3 (odd halves of the word) take its upper 16 bits.
  __device__ static uint32_t prepare(uint32_t q, int c) { return q >> (16 * (c % 2)); }
  // Codes u and u + 4 (bits 2u, 2u + 8) as 2c + 1 in the mantissa of 256 (ulp 1/4):
  // 256 + (2c + 1) / 4 - 257 = (c - 1.5) / 2, exact.
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t t = (((w[0] >> (2 * U)) << 1) & 0x0606u) | 0x0101u;
    const uint32_t h = __byte_perm(t, 0x5c5c5c5cu, 0x5140);  // bytes: t0, 0x5c, t1, 0x5c
    const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&h), __float2half2_rn(257.0f));
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

template <typename TA>
constexpr float activation_unscale() {
  return std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
}

// Lane (g, c)'s words of unit `unit` (32 rows of K from row 0) for columns col..col+7 of W, in
// w[j * kWords + r] (column col + j, word r); zeros where !in. kReadOnce: no other block reads
// them in this launch (decode), so they are read evict_first, like the tile kernels' weights
// (tile::weight_l2_policy), and allocated in L1: a lane's two 16-byte loads are the halves of
// one 32-byte sector, so the second can be served by the first's fill in L1 rather than by L2
// again (the reason is not checked with counters; the effect on an H200: `bench moe --tokens 1`
// 24.5 against 24.7-24.8 µs, GLM-4.7-Flash b8 884.11 against 867.09 tok/s). A prompt's token
// tiles share an expert's weights through L2.
template <QuantFormat F, bool kReadOnce>
__device__ __forceinline__ void load_unit_words(const MoeMatrix& W, int unit, int c, int col, bool in,
                                                uint32_t* w) {
  using Cd = Canon<F>;
#pragma unroll
  for (int r = 0; r < Cd::kWords; ++r) {
    const int64_t prow = static_cast<int64_t>(unit) * Cd::kRowsPerUnit + Cd::row(c) + r;
    const uint32_t* src = W.packed + prow * W.N + col;
    uint4 lo = make_uint4(0, 0, 0, 0), hi = make_uint4(0, 0, 0, 0);
    if (in && kReadOnce) {
      const uint64_t policy = tile::weight_l2_policy();
      lo = tile::ldg_nc_policy<true>(src, policy);
      hi = tile::ldg_nc_policy<true>(src + 4, policy);
    } else if (in) {
      lo = __ldg(reinterpret_cast<const uint4*>(src));
      hi = __ldg(reinterpret_cast<const uint4*>(src + 4));
    }
    const uint32_t v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j * Cd::kWords + r] = v[j];
  }
}

// B's register pairs from a lane's 8 activations x[8c .. 8c + 7] of a unit: (x[8c + p],
// x[8c + p + 4]) in the permuted k order.
template <typename TA>
__device__ __forceinline__ void activation_pairs(uint4 xv, uint32_t (&xp)[4]) {
  const uint4 xh = tile::activations_as_f16<TA>(xv);
  xp[0] = __byte_perm(xh.x, xh.z, 0x5410);
  xp[1] = __byte_perm(xh.x, xh.z, 0x7632);
  xp[2] = __byte_perm(xh.y, xh.w, 0x5410);
  xp[3] = __byte_perm(xh.y, xh.w, 0x7632);
}

// One unit's mmas: sums[n][t] += A (the lane's words q, prepared) x B group n (xp[n]), for NB
// groups of 8 tokens; each A fragment is decoded once for all groups.
template <QuantFormat F, int NB>
__device__ __forceinline__ void unit_mma(const uint32_t* q, const uint32_t (&xp)[NB][4], float (&sums)[NB][4][4]) {
  using Cd = Canon<F>;
#pragma unroll
  for (int step = 0; step < 2; ++step)
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      // Rows g and g + 8 of A: columns 8g + 2t and 8g + 2t + 1.
      const uint32_t* lo = q + (2 * t) * Cd::kWords;
      const uint32_t* hi = q + (2 * t + 1) * Cd::kWords;
      uint32_t a[4];
      if (step == 0) {
        a[0] = Cd::template pair<0>(lo);
        a[1] = Cd::template pair<0>(hi);
        a[2] = Cd::template pair<1>(lo);
        a[3] = Cd::template pair<1>(hi);
      } else {
        a[0] = Cd::template pair<2>(lo);
        a[1] = Cd::template pair<2>(hi);
        a[2] = Cd::template pair<3>(lo);
        a[3] = Cd::template pair<3>(hi);
      }
#pragma unroll
      for (int n = 0; n < NB; ++n) mma_16816(sums[n][t], a, xp[n][2 * step], xp[n][2 * step + 1]);
    }
}

}  // namespace marlin::cuda::moe_canon
