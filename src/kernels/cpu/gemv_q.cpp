// CPU quantized GEMM for decode sizes (M <= 4): eight columns at a time, each packed word is
// loaded once and its P codes are decoded in registers (FP4 and INT2 through an in-register
// table, FP8 through its bit fields) straight into FMAs; a group's sum is scaled once.
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/scalar_io.h"
#include "quant/formats.h"

namespace marlin::cpu {

#ifdef MARLIN_CPU_AVX2
namespace {

template <QuantFormat F>
struct Avx2Codec;

template <>
struct Avx2Codec<QuantFormat::fp4_e2m1> {
  __m256 magnitudes = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  template <int J>
  __m256 decode(__m256i w) const {
    const __m256i c = _mm256_srli_epi32(w, 4 * J);
    const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, c);  // low 3 bits pick
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
  }
};

template <>
struct Avx2Codec<QuantFormat::int2> {
  __m256 levels = _mm256_setr_ps(-1.5f, -0.5f, 0.5f, 1.5f, -1.5f, -0.5f, 0.5f, 1.5f);
  template <int J>
  __m256 decode(__m256i w) const {
    return _mm256_permutevar8x32_ps(levels, _mm256_and_si256(_mm256_srli_epi32(w, 2 * J), _mm256_set1_epi32(3)));
  }
};

// E4M3: normal codes rebias the exponent (7 -> 127) in the f32 bits; subnormal codes are
// m * 2^-9 (done in float, so no denormal f32 is ever formed).
template <>
struct Avx2Codec<QuantFormat::fp8_e4m3> {
  template <int J>
  __m256 decode(__m256i w) const {
    const __m256i b = _mm256_and_si256(_mm256_srli_epi32(w, 8 * J), _mm256_set1_epi32(0xff));
    const __m256i body = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
    const __m256 normal = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(body, 20), _mm256_set1_epi32(120 << 23)));
    const __m256 subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(7))), _mm256_set1_ps(0.001953125f));
    const __m256i is_sub = _mm256_cmpeq_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x78)), _mm256_setzero_si256());
    const __m256 mag = _mm256_blendv_ps(normal, subnormal, _mm256_castsi256_ps(is_sub));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
  }
};

template <QuantFormat F, int M, int J>
inline void fma_codes(const Avx2Codec<F>& codec, __m256i w, const float* a, int64_t K, __m256 (&acc)[M]) {
  if constexpr (J < 32 / format_bits(F)) {
    const __m256 v = codec.template decode<J>(w);
    for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + m * K + J), v, acc[m]);
    fma_codes<F, M, J + 1>(codec, w, a, K, acc);
  }
}

// Columns [n0, n0 + 8) of C for all M rows.
template <QuantFormat F, int M>
void gemv_columns(const float* a, const QuantizedWeight& W, int64_t n0, float (&out)[M][8]) {
  constexpr int P = 32 / format_bits(F);
  const Avx2Codec<F> codec;
  const int64_t K = W.K, N = W.N, rows_per_group = W.group_size / P;
  const uint32_t* packed = W.packed.data<uint32_t>() + n0;
  const uint16_t* scales = static_cast<const uint16_t*>(W.scales.data_ptr()) + n0;
  __m256 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / W.group_size; ++g) {
    __m256 group_acc[M];
    for (int m = 0; m < M; ++m) group_acc[m] = _mm256_setzero_ps();
    for (int64_t r = g * rows_per_group; r < (g + 1) * rows_per_group; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + r * N));
      fma_codes<F, M, 0>(codec, w, a + r * P, K, group_acc);
    }
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * N)));
    for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(group_acc[m], s, acc[m]);
  }
  for (int m = 0; m < M; ++m) _mm256_storeu_ps(out[m], acc[m]);
}

template <QuantFormat F, int M>
void gemv(const std::vector<float>& a, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  parallel_for(0, W.N / 8, 8, [&](int64_t b, int64_t e) {
    for (int64_t block = b; block < e; ++block) {
      float out[M][8];
      gemv_columns<F, M>(a.data(), W, block * 8, out);
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 8; ++j) {
          const int64_t n = block * 8 + j;
          const float v = out[m][j] + (bias.defined() ? load_scalar(bias.data_ptr(), bias.dtype(), n) : 0.0f);
          store_scalar(C.data_ptr(), C.dtype(), m * W.N + n, v);
        }
    }
  });
}

template <QuantFormat F>
void gemv_rows(int64_t M, const std::vector<float>& a, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  switch (M) {
    case 1: gemv<F, 1>(a, W, bias, C); break;
    case 2: gemv<F, 2>(a, W, bias, C); break;
    case 3: gemv<F, 3>(a, W, bias, C); break;
    default: gemv<F, 4>(a, W, bias, C); break;
  }
}

}  // namespace

bool gemv_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  const int64_t M = A.size(0);
  if (M > 4 || W.N % 8 != 0) return false;
  const std::vector<float> a = to_f32(A);
  switch (W.format) {
    case QuantFormat::fp4_e2m1: gemv_rows<QuantFormat::fp4_e2m1>(M, a, W, bias, C); break;
    case QuantFormat::fp8_e4m3: gemv_rows<QuantFormat::fp8_e4m3>(M, a, W, bias, C); break;
    case QuantFormat::int2: gemv_rows<QuantFormat::int2>(M, a, W, bias, C); break;
  }
  return true;
}

#else

bool gemv_q(const Tensor&, const QuantizedWeight&, const Tensor&, Tensor&) { return false; }

#endif

}  // namespace marlin::cpu
