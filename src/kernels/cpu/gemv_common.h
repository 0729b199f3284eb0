// Internal to the CPU kernels: what the decode GEMVs (gemv_dense.cpp, gemv_q.cpp) share: the
// dispatch on the row count M <= 4 and, on the AVX-512 path, the split of the columns into one
// task per thread, the masked tail of a task's last 16-column vector and the bias-adding store
// of a task's sums. All inline templates around (never inside) the kernels' inner loops.
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

#ifdef MARLIN_CPU_AVX512

// fn(n0, n1) on one task of 16-column vectors per thread over N columns: the widest contiguous
// run of each weight row, which the prefetchers need (narrow tasks measured 2x slower).
template <class Fn>
inline void for_each_column_task16(int64_t N, Fn&& fn) {
  const int64_t vecs = (N + 15) / 16;
  parallel_for(0, vecs, (vecs + num_threads() - 1) / num_threads(),
               [&](int64_t b, int64_t e) { fn(b * 16, std::min(e * 16, N)); });
}

// The lanes of the last 16-column vector of columns [n0, n1).
inline __mmask16 tail_mask16(int64_t n0, int64_t n1) {
  const int rem = static_cast<int>((n1 - n0) % 16);
  return rem == 0 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1u);
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

#endif  // MARLIN_CPU_AVX512

}  // namespace marlin::cpu
