// Internal to the CPU kernels: what the decode GEMVs (gemv_dense.cpp, gemv_q.cpp) share: the
// dispatch on the row count M <= 4, the split of the columns into one task per thread, the
// bias-adding store of a task's sums, and the masked tail of a task's last vector (16 columns
// with AVX-512, 8 with AVX2). All inline helpers around (never inside) the inner loops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cpu/scalar_io.h"

namespace marlin::cpu {

// fn(std::integral_constant<int, M>{}) for M = 1, 2, 3, and 4 for any larger row count.
template <class Fn>
inline void dispatch_gemv_rows(int64_t M, Fn&& fn) {
  switch (M) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    default: fn(std::integral_constant<int, 4>{}); break;
  }
}

// fn(n0, n1) on one task of `width`-column vectors per thread over N columns: the widest
// contiguous run of each weight row, which the prefetchers need (narrow tasks measured 2x slower).
template <class Fn>
inline void for_each_column_task(int64_t N, int64_t width, Fn&& fn) {
  const int64_t vecs = (N + width - 1) / width;
  parallel_for(0, vecs, (vecs + num_threads() - 1) / num_threads(),
               [&](int64_t b, int64_t e) { fn(b * width, std::min(e * width, N)); });
}

// C[m, n] = acc[m * stride + n - n0] + bias[n] for the M rows and columns [n0, n1) of C [M, N].
template <int M>
inline void store_gemv_columns(const std::vector<float>& acc, int64_t stride, int64_t n0, int64_t n1,
                               int64_t N, const Tensor& bias, Tensor& C) {
  for (int m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) {
      const float b = bias.defined() ? load_scalar(bias.data_ptr(), bias.dtype(), n) : 0.0f;
      store_scalar(C.data_ptr(), C.dtype(), m * N + n, acc[static_cast<size_t>(m * stride + n - n0)] + b);
    }
}

#ifdef MARLIN_CPU_AVX512

template <class Fn>
inline void for_each_column_task16(int64_t N, Fn&& fn) {
  for_each_column_task(N, 16, fn);
}

// The lanes of the last 16-column vector of columns [n0, n1).
inline __mmask16 tail_mask16(int64_t n0, int64_t n1) {
  const int rem = static_cast<int>((n1 - n0) % 16);
  return rem == 0 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1u);
}

#elif defined(MARLIN_CPU_AVX2)

// The AVX2 GEMVs walk 8-column vectors the same way; the last vector of columns [n0, n1) holds
// `lanes8` of them, read through a lane mask (vpmaskmov: masked lanes are not read at all).
inline int lanes8(int64_t n0, int64_t n1) {
  const int rem = static_cast<int>((n1 - n0) % 8);
  return rem == 0 ? 8 : rem;
}
inline __m256i lane_mask8(int lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// `lanes` 16-bit values at p, zeros above: 8 lanes as one 16-byte load, fewer through a copy
// (AVX2 has no masked 16-bit load).
inline __m128i load_u16x8(const uint16_t* p, int lanes) {
  if (lanes == 8) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint16_t tmp[8] = {};
  std::copy(p, p + lanes, tmp);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

#endif  // MARLIN_CPU_AVX512 / MARLIN_CPU_AVX2

}  // namespace marlin::cpu
