// CPU dense GEMV for decode sizes (M <= 4, AVX-512 or AVX2): C = A @ B with B [K, N] in f32, f16 or bf16
// (lm_head and other 16-bit layers). A task owns a range of columns and walks B four rows at a
// time in address order, so the weights stream through the prefetchers; the f32 sums of its
// columns stay in L1/L2 between row blocks.
#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gemv_common.h"
#include "kernels/cpu/scalar_io.h"

namespace marlin::cpu {

#ifdef MARLIN_CPU_AVX512
// GCC 12 warns inside its own AVX-512 headers (their _mm512_undefined_* placeholders) when
// these intrinsics are inlined into a loop: a false positive (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace {

template <DType T>
inline __m512 load_row16(const void* base, int64_t i, __mmask16 mask) {
  if constexpr (T == DType::f32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
  } else if constexpr (T == DType::f16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
  } else {  // bf16 is the top half of an f32
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

constexpr int64_t kRows = 4;  // rows of B per pass over the task's columns

template <DType T, int M>
void gemv_columns(const float* a, const Tensor& B, int64_t n0, int64_t n1, const Tensor& bias, Tensor& C) {
  const int64_t K = B.size(0), N = B.size(1);
  const int64_t vecs = (n1 - n0 + 15) / 16, stride = vecs * 16;
  const __mmask16 tail = tail_mask16(n0, n1);
  std::vector<float> acc(static_cast<size_t>(M * stride), 0.0f);
  const void* b = B.data_ptr();
  for (int64_t k0 = 0; k0 < K; k0 += kRows) {
    const int64_t rows = std::min(kRows, K - k0);
    // The next row block's same columns, fetched while this one is summed (see gemv_q.cpp).
    const char* ahead = k0 + 2 * kRows <= K ? static_cast<const char*>(b) + ((k0 + kRows) * N + n0) * static_cast<int64_t>(B.element_size()) : nullptr;
    const int64_t row_bytes = N * static_cast<int64_t>(B.element_size());
    for (int64_t v = 0; v < vecs; ++v) {
      const __mmask16 mask = v == vecs - 1 ? tail : __mmask16(0xffff);
      if (ahead) {
        const int64_t off = v * 16 * static_cast<int64_t>(B.element_size());
        for (int64_t r = 0; r < kRows; ++r) _mm_prefetch(ahead + r * row_bytes + off, _MM_HINT_T0);
      }
      __m512 c[M];
      for (int m = 0; m < M; ++m) c[m] = _mm512_loadu_ps(acc.data() + m * stride + v * 16);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 w = load_row16<T>(b, (k0 + r) * N + n0 + v * 16, mask);
        for (int m = 0; m < M; ++m) c[m] = _mm512_fmadd_ps(_mm512_set1_ps(a[m * K + k0 + r]), w, c[m]);
      }
      for (int m = 0; m < M; ++m) _mm512_storeu_ps(acc.data() + m * stride + v * 16, c[m]);
    }
  }
  store_gemv_columns<M>(acc, stride, n0, n1, N, bias, C);
}

template <DType T>
void gemv_rows(int64_t M, const std::vector<float>& a, const Tensor& B, const Tensor& bias, Tensor& C) {
  dispatch_gemv_rows(M, [&](auto rows) {
    for_each_column_task16(B.size(1), [&](int64_t n0, int64_t n1) {
      gemv_columns<T, decltype(rows)::value>(a.data(), B, n0, n1, bias, C);
    });
  });
}

}  // namespace

#elif defined(MARLIN_CPU_AVX2)
namespace {

// 8 values of a row of B from element i on (`lanes` of them, zeros above).
template <DType T>
inline __m256 load_row8(const void* base, int64_t i, int lanes, __m256i mask) {
  if constexpr (T == DType::f32) {
    return _mm256_maskload_ps(static_cast<const float*>(base) + i, mask);
  } else if constexpr (T == DType::f16) {
    return _mm256_cvtph_ps(load_u16x8(static_cast<const uint16_t*>(base) + i, lanes));
  } else {  // bf16 is the top half of an f32
    const __m256i wide = _mm256_cvtepu16_epi32(load_u16x8(static_cast<const uint16_t*>(base) + i, lanes));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

constexpr int64_t kRows = 4;  // rows of B per pass over the task's columns

// The AVX-512 gemv_columns with 8-column vectors. (Without it the 16-bit lm_head of
// Llama-3.2-1B, half its decode bytes, went through the blocked GEMM.)
template <DType T, int M>
void gemv_columns(const float* a, const Tensor& B, int64_t n0, int64_t n1, const Tensor& bias, Tensor& C) {
  const int64_t K = B.size(0), N = B.size(1);
  const int64_t vecs = (n1 - n0 + 7) / 8, stride = vecs * 8;
  const int tail = lanes8(n0, n1);
  const __m256i all = _mm256_set1_epi32(-1), tail_mask = lane_mask8(tail);
  const int64_t es = static_cast<int64_t>(B.element_size()), row_bytes = N * es;
  std::vector<float> acc(static_cast<size_t>(M * stride), 0.0f);
  const void* b = B.data_ptr();
  for (int64_t k0 = 0; k0 < K; k0 += kRows) {
    const int64_t rows = std::min(kRows, K - k0);
    const char* ahead = k0 + 2 * kRows <= K ? static_cast<const char*>(b) + ((k0 + kRows) * N + n0) * es : nullptr;
    for (int64_t v = 0; v < vecs; ++v) {
      const bool is_tail = v == vecs - 1;
      if (ahead && (v * 8 * es) % 64 == 0)  // one prefetch a 64-byte line of each row
        for (int64_t r = 0; r < kRows; ++r) _mm_prefetch(ahead + r * row_bytes + v * 8 * es, _MM_HINT_T0);
      __m256 c[M];
      for (int m = 0; m < M; ++m) c[m] = _mm256_loadu_ps(acc.data() + m * stride + v * 8);
      for (int64_t r = 0; r < rows; ++r) {
        const __m256 w = load_row8<T>(b, (k0 + r) * N + n0 + v * 8, is_tail ? tail : 8, is_tail ? tail_mask : all);
        for (int m = 0; m < M; ++m) c[m] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + m * K + k0 + r), w, c[m]);
      }
      for (int m = 0; m < M; ++m) _mm256_storeu_ps(acc.data() + m * stride + v * 8, c[m]);
    }
  }
  store_gemv_columns<M>(acc, stride, n0, n1, N, bias, C);
}

template <DType T>
void gemv_rows(int64_t M, const std::vector<float>& a, const Tensor& B, const Tensor& bias, Tensor& C) {
  dispatch_gemv_rows(M, [&](auto rows) {
    for_each_column_task(B.size(1), 8, [&](int64_t n0, int64_t n1) {
      gemv_columns<T, decltype(rows)::value>(a.data(), B, n0, n1, bias, C);
    });
  });
}

}  // namespace

#endif

#if defined(MARLIN_CPU_AVX512) || defined(MARLIN_CPU_AVX2)

bool gemv(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C) {
  const int64_t M = A.size(0);
  if (M > 4 || !B.is_contiguous()) return false;
  const std::vector<float> a = to_f32(A);
  switch (B.dtype()) {
    case DType::f32: gemv_rows<DType::f32>(M, a, B, bias, C); return true;
    case DType::f16: gemv_rows<DType::f16>(M, a, B, bias, C); return true;
    case DType::bf16: gemv_rows<DType::bf16>(M, a, B, bias, C); return true;
    default: return false;
  }
}

#else

bool gemv(const Tensor&, const Tensor&, const Tensor&, Tensor&) { return false; }

#endif

}  // namespace marlin::cpu
