// CPU quantized GEMM for decode sizes (M <= 4): each packed word is loaded once and its P codes
// are decoded in registers straight into FMAs (AVX-512: FP4 and INT2 through an in-register
// table, FP8 through its bit fields; AVX2: byte tables for all three); a group's sum is scaled
// once. A task (one a thread) walks its columns row by row along K, 16 columns a vector with
// AVX-512 and 8 with AVX2, so the weights stream from memory in address order (a walk down one
// column block would touch a new page every row and defeat the prefetchers).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gemv_common.h"
#include "kernels/cpu/scalar_io.h"
#include "quant/formats.h"

namespace marlin::cpu {

// Packed rows a GEMV task prefetches ahead of the one it decodes.
[[maybe_unused]] constexpr int64_t kAhead = 2;

#ifdef MARLIN_CPU_AVX512
// GCC 12 warns inside its own AVX-512 headers (their _mm512_undefined_* placeholders) when
// these intrinsics are inlined into a loop: a false positive (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace {

template <QuantFormat F>
struct Avx512Codec;

// FP4 and INT2: the code's low bits index a 16-entry table (vpermps reads 4 index bits; INT2's
// table repeats its 4 levels so the neighbouring code's bits do not matter).
template <>
struct Avx512Codec<QuantFormat::fp4_e2m1> {
  __m512 table = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f,
                                -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  template <int J>
  __m512 decode(__m512i w) const {
    return _mm512_permutexvar_ps(J == 0 ? w : _mm512_srli_epi32(w, 4 * J), table);
  }
};

template <>
struct Avx512Codec<QuantFormat::int2> {
  __m512 table = _mm512_setr_ps(-1.5f, -0.5f, 0.5f, 1.5f, -1.5f, -0.5f, 0.5f, 1.5f, -1.5f, -0.5f,
                                0.5f, 1.5f, -1.5f, -0.5f, 0.5f, 1.5f);
  template <int J>
  __m512 decode(__m512i w) const {
    return _mm512_permutexvar_ps(J == 0 ? w : _mm512_srli_epi32(w, 2 * J), table);
  }
};

// E4M3 as in the AVX2 codec below: normal codes rebias the exponent, subnormals are m * 2^-9.
template <>
struct Avx512Codec<QuantFormat::fp8_e4m3> {
  template <int J>
  __m512 decode(__m512i w) const {
    const __m512i b = _mm512_and_si512(_mm512_srli_epi32(w, 8 * J), _mm512_set1_epi32(0xff));
    const __m512i body = _mm512_and_si512(b, _mm512_set1_epi32(0x7f));
    const __m512 normal = _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_slli_epi32(body, 20), _mm512_set1_epi32(120 << 23)));
    const __m512 subnormal = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(7))), _mm512_set1_ps(0.001953125f));
    const __mmask16 is_sub = _mm512_testn_epi32_mask(b, _mm512_set1_epi32(0x78));
    const __m512 mag = _mm512_mask_blend_ps(is_sub, normal, subnormal);
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag), sign));
  }
};

template <QuantFormat F, int M, int J>
inline void fma_codes512(const Avx512Codec<F>& codec, __m512i w, const float* a, int64_t K,
                         __m512 (&acc)[M]) {
  if constexpr (J < 32 / format_bits(F)) {
    const __m512 v = codec.template decode<J>(w);
    for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(a[m * K + J]), v, acc[m]);
    fma_codes512<F, M, J + 1>(codec, w, a, K, acc);
  }
}

// Columns [n0, n1) of C for all M rows. `partial` holds each column's sum over the current
// group, `acc` the scaled sums of the groups done; both stay in L1/L2 while the packed rows
// stream past.
template <QuantFormat F, int M>
void gemv_columns512(const float* a, const QuantizedWeight& W, int64_t n0, int64_t n1,
                     const Tensor& bias, Tensor& C) {
  constexpr int P = 32 / format_bits(F);
  const Avx512Codec<F> codec;
  const int64_t K = W.K, N = W.N, rows_per_group = W.group_size / P;
  const int64_t vecs = (n1 - n0 + 15) / 16, stride = vecs * 16;
  const __mmask16 tail = tail_mask16(n0, n1);
  std::vector<float> acc(static_cast<size_t>(M * stride), 0.0f), partial(static_cast<size_t>(M * stride));
  const uint32_t* packed = W.packed.data<uint32_t>();
  const uint16_t* scales = static_cast<const uint16_t*>(W.scales.data_ptr());
  for (int64_t g = 0; g < K / W.group_size; ++g) {
    for (int64_t rr = 0; rr < rows_per_group; ++rr) {
      const int64_t r = g * rows_per_group + rr;
      const uint32_t* row = packed + r * N + n0;
      const bool first = rr == 0, last = rr == rows_per_group - 1;
      // The hardware prefetchers lose the stream at each row's jump of N words: fetch the
      // same columns kAhead rows down while this row is decoded (profiled: the loads stalled).
      const uint32_t* ahead = r + kAhead < K / P ? row + kAhead * N : nullptr;
      for (int64_t v = 0; v < vecs; ++v) {
        const __mmask16 mask = v == vecs - 1 ? tail : __mmask16(0xffff);
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(ahead + v * 16), _MM_HINT_T0);
        const __m512i w = _mm512_maskz_loadu_epi32(mask, row + v * 16);
        __m512 p[M];
        for (int m = 0; m < M; ++m)
          p[m] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(partial.data() + m * stride + v * 16);
        fma_codes512<F, M, 0>(codec, w, a + r * P, K, p);
        if (last) {
          const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, scales + g * N + n0 + v * 16));
          for (int m = 0; m < M; ++m) {
            float* out = acc.data() + m * stride + v * 16;
            _mm512_storeu_ps(out, _mm512_fmadd_ps(p[m], s, _mm512_loadu_ps(out)));
          }
        } else {
          for (int m = 0; m < M; ++m) _mm512_storeu_ps(partial.data() + m * stride + v * 16, p[m]);
        }
      }
    }
  }
  store_gemv_columns<M>(acc, stride, n0, n1, N, bias, C);
}

template <QuantFormat F>
void gemv_rows(int64_t M, const std::vector<float>& a, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  dispatch_gemv_rows(M, [&](auto rows) {
    for_each_column_task16(W.N, [&](int64_t n0, int64_t n1) {
      gemv_columns512<F, decltype(rows)::value>(a.data(), W, n0, n1, bias, C);
    });
  });
}

}  // namespace

#elif defined(MARLIN_CPU_AVX2)
namespace {

// Every format by byte tables (ByteTableSums): each code's bf16 bits (exact: every E2M1 and
// E4M3 value and every INT2 level is a bf16) come from vpshufb lookups (high and low byte) for 32
// codes at once, and a byte interleave puts two codes' bf16 in each 32-bit lane, which one shift
// or mask makes f32. For FP4, per 8 columns x 8 codes: 3 index ops, 4 lookups, 4 interleaves, 8
// shifts/masks and 8 FMAs, against 40 decode ops (shift, vpermps, sign mask, shift, xor per 8
// codes) and 8 FMAs in the codec it replaced, where the FP4 GEMV was bound by its decode
// instructions (docs/PERFORMANCE.md; FP8 and INT2 followed in the seventeenth session). The
// lanes then hold (column, K phase) pairs: accumulator `lo` columns 0, 1, 4, 5 and `hi` columns
// 2, 3, 6, 7, two K phases each, and one hadd at a group's end gives the 8 columns in order.

// The bf16 of two 16-bit-word vectors made by interleaving low and high bytes (columns 0, 1 and
// 2, 3 of each 128-bit half; a 32-bit lane holds two codes of one column, the low word's K phase
// first) times x_first / x_second, the activations of those phases (x: 16 floats).
inline void fma_bf16_pairs(__m256i low, __m256i high, const float* x, __m256& acc_lo, __m256& acc_hi) {
  const __m256i high_words = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i cols01 = _mm256_unpacklo_epi8(low, high), cols23 = _mm256_unpackhi_epi8(low, high);
  const __m256 x_first = _mm256_load_ps(x), x_second = _mm256_load_ps(x + 8);
  acc_lo = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(cols01, 16)), x_first, acc_lo);
  acc_lo = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(cols01, high_words)), x_second, acc_lo);
  acc_hi = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(cols23, 16)), x_first, acc_hi);
  acc_hi = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(cols23, high_words)), x_second, acc_hi);
}

// Byte b of a packed FP4 word holds codes K = 2b (low nibble) and 2b + 1.
struct Fp4Tables {
  static constexpr int kCodes = 8;     // a packed row's codes (K) per column
  static constexpr int kXFloats = 32;  // activation floats a row (row_activations)
  // Code (sign, 2 exponent bits, 1 mantissa bit) -> bf16 high / low byte of its value
  // (0, 0.5, 1, 1.5, 2, 3, 4, 6, then the same negated), in both 128-bit halves.
  const __m256i high = _mm256_setr_epi8(0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF),
                                        char(0xBF), char(0xBF), char(0xC0), char(0xC0), char(0xC0), char(0xC0),
                                        0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF),
                                        char(0xBF), char(0xBF), char(0xC0), char(0xC0), char(0xC0), char(0xC0));
  const __m256i low = _mm256_setr_epi8(0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0), 0x00,
                                       0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00,
                                       char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00,
                                       char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0));

  // The 4 activation vectors of a packed row (a8: its 8 codes' activations): lanes (a0, a4) x 4,
  // (a2, a6) x 4, (a1, a5) x 4, (a3, a7) x 4, matching the f32 vectors of fma below. In memory,
  // so the FMAs read them as operands: AVX2's 16 registers hold the tables, masks, accumulators
  // and codes of two rows, not also their activation vectors.
  static void row_activations(const float* a8, float* x) {
    const __m256 v = _mm256_loadu_ps(a8);
    _mm256_store_ps(x, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4)));
    _mm256_store_ps(x + 8, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(2, 6, 2, 6, 2, 6, 2, 6)));
    _mm256_store_ps(x + 16, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 5, 1, 5, 1, 5, 1, 5)));
    _mm256_store_ps(x + 24, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(3, 7, 3, 7, 3, 7, 3, 7)));
  }

  // acc_lo / acc_hi += the codes of w (8 columns x 8 K) times x (row_activations). A 32-bit lane
  // of a set holds codes K = 4j + {0, 2} (+1 for the odd set).
  void fma(__m256i w, const float* x, __m256& acc_lo, __m256& acc_hi) const {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i even = _mm256_and_si256(w, nibble);                         // codes K = 2b of byte b
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);  // codes K = 2b + 1
    fma_bf16_pairs(_mm256_shuffle_epi8(low, even), _mm256_shuffle_epi8(high, even), x, acc_lo, acc_hi);
    fma_bf16_pairs(_mm256_shuffle_epi8(low, odd), _mm256_shuffle_epi8(high, odd), x + 16, acc_lo, acc_hi);
  }
};

// Byte b of a packed INT2 word holds codes K = 4b + i (bits 2i, 2i + 1), i = 0 .. 3. Against
// the codec (shift, mask, vpermps, broadcast and FMA per 8 codes): about 15 operations per 32
// codes instead of 20.
struct Int2Tables {
  static constexpr int kCodes = 16;
  static constexpr int kXFloats = 64;
  // Code c -> bf16 high / low byte of c - 1.5 (-1.5, -0.5, 0.5, 1.5), in both 128-bit halves.
  const __m256i high = _mm256_setr_epi8(char(0xBF), char(0xBF), 0x3F, 0x3F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        char(0xBF), char(0xBF), 0x3F, 0x3F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i low = _mm256_setr_epi8(char(0xC0), 0x00, 0x00, char(0xC0), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                       char(0xC0), 0x00, 0x00, char(0xC0), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);

  // For each i, the lanes of the two phases of codes i of every byte: (a_i, a_{8+i}) x 4 and
  // (a_{4+i}, a_{12+i}) x 4 (a16: the row's 16 codes' activations).
  static void row_activations(const float* a16, float* x) {
    for (int i = 0; i < 4; ++i) {
      _mm256_store_ps(x + 16 * i, _mm256_blend_ps(_mm256_set1_ps(a16[i]), _mm256_set1_ps(a16[8 + i]), 0xAA));
      _mm256_store_ps(x + 16 * i + 8, _mm256_blend_ps(_mm256_set1_ps(a16[4 + i]), _mm256_set1_ps(a16[12 + i]), 0xAA));
    }
  }

  void fma(__m256i w, const float* x, __m256& acc_lo, __m256& acc_hi) const {
    const __m256i mask = _mm256_set1_epi8(0x03);
    for (int i = 0; i < 4; ++i) {
      // 16-bit shifts: a byte's codes i (bits 2i, 2i + 1) stay in that byte for 2i <= 6.
      const __m256i code = _mm256_and_si256(i == 0 ? w : _mm256_srli_epi16(w, 2 * i), mask);
      fma_bf16_pairs(_mm256_shuffle_epi8(low, code), _mm256_shuffle_epi8(high, code), x + 16 * i, acc_lo, acc_hi);
    }
  }
};

// Byte b of a packed FP8 word holds code K = b. E4M3 (sign, 4 exponent, 3 mantissa bits) is
// exact in bf16: a normal code's bf16 is sign | (e + 120) << 7 | m << 4, whose high byte depends
// on the code's high nibble alone ((e + 120) >> 1 = (e >> 1) + 60) and low byte on its low
// nibble ((e & 1) << 7 | m << 4): one lookup each. Subnormal codes (e = 0: m x 2^-9) take two
// more lookups on m and a blend. 23 operations per 32 codes against ~64 for the codec (its
// exponent rebias, subnormal blend and sign per 8 codes, a broadcast and an FMA).
struct Fp8Tables {
  static constexpr int kCodes = 4;
  static constexpr int kXFloats = 16;
  // High nibble (sign, e3, e2, e1) -> sign << 7 | (e >> 1) + 60; low nibble (e0, m) -> e0 << 7 | m << 4.
  const __m256i high = _mm256_setr_epi8(60, 61, 62, 63, 64, 65, 66, 67, char(188), char(189), char(190), char(191),
                                        char(192), char(193), char(194), char(195), 60, 61, 62, 63, 64, 65, 66, 67,
                                        char(188), char(189), char(190), char(191), char(192), char(193), char(194),
                                        char(195));
  const __m256i low = _mm256_setr_epi8(0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, char(0x80), char(0x90),
                                       char(0xA0), char(0xB0), char(0xC0), char(0xD0), char(0xE0), char(0xF0), 0x00,
                                       0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, char(0x80), char(0x90), char(0xA0),
                                       char(0xB0), char(0xC0), char(0xD0), char(0xE0), char(0xF0));
  // Subnormals by m (the low nibble; e0 = 0): bf16 of m x 2^-9, high byte (sign added) and low.
  const __m256i sub_high = _mm256_setr_epi8(0x00, 0x3B, 0x3B, 0x3B, 0x3C, 0x3C, 0x3C, 0x3C, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0x00, 0x3B, 0x3B, 0x3B, 0x3C, 0x3C, 0x3C, 0x3C, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i sub_low = _mm256_setr_epi8(0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x20, 0x40, 0x60, 0, 0, 0, 0, 0, 0,
                                           0, 0, 0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x20, 0x40, 0x60, 0, 0, 0, 0,
                                           0, 0, 0, 0);

  // (a0, a2) x 4 and (a1, a3) x 4 (a4: the row's 4 codes' activations).
  static void row_activations(const float* a4, float* x) {
    _mm256_store_ps(x, _mm256_blend_ps(_mm256_set1_ps(a4[0]), _mm256_set1_ps(a4[2]), 0xAA));
    _mm256_store_ps(x + 8, _mm256_blend_ps(_mm256_set1_ps(a4[1]), _mm256_set1_ps(a4[3]), 0xAA));
  }

  void fma(__m256i w, const float* x, __m256& acc_lo, __m256& acc_hi) const {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i hi_nibble = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble), lo_nibble = _mm256_and_si256(w, nibble);
    const __m256i subnormal = _mm256_cmpeq_epi8(_mm256_and_si256(w, _mm256_set1_epi8(0x78)), _mm256_setzero_si256());
    const __m256i sign = _mm256_and_si256(w, _mm256_set1_epi8(char(0x80)));
    const __m256i h = _mm256_blendv_epi8(_mm256_shuffle_epi8(high, hi_nibble),
                                         _mm256_or_si256(_mm256_shuffle_epi8(sub_high, lo_nibble), sign), subnormal);
    const __m256i l = _mm256_blendv_epi8(_mm256_shuffle_epi8(low, lo_nibble), _mm256_shuffle_epi8(sub_low, lo_nibble),
                                         subnormal);
    fma_bf16_pairs(l, h, x, acc_lo, acc_hi);
  }
};

// What gemv_columns256 adds up a row: kParts vectors of sums a column vector and row of A, the
// byte tables' (column, K phase) lanes, turned into the 8 columns' sums at a group's end. Two
// packed rows a pass, so the partial sums are read and written once for both (a group has an
// even row count: group sizes are 32 to 256, is_valid_group_size).
template <class Tables, int M>
struct ByteTableSums {
  static constexpr int kParts = 2, kRows = 2, R = kRows;
  const Tables tables{};
  const float* a;
  int64_t K;
  alignas(32) float x[R][M][Tables::kXFloats] = {};  // start_rows
  void start_rows(int64_t r) {
    for (int j = 0; j < R; ++j)
      for (int m = 0; m < M; ++m) Tables::row_activations(a + m * K + (r + j) * Tables::kCodes, x[j][m]);
  }
  void add(const __m256i (&w)[kRows], __m256 (&p)[M][kParts]) const {
    for (int j = 0; j < R; ++j)
      for (int m = 0; m < M; ++m) tables.fma(w[j], x[j][m], p[m][0], p[m][1]);
  }
  static __m256 columns(const __m256 (&p)[kParts]) { return _mm256_hadd_ps(p[0], p[1]); }
};

// Columns [n0, n1) of C for all M rows, as gemv_columns512 with 8-column vectors: the task walks
// its columns row by row along K. (Walking eight columns down K instead used half of each 64-byte
// line a row and left the prefetchers a jump of N words every row: Llama-3.2-1B FP4 decoded at
// 2.29 tokens/s on a 2-core AVX2 machine, 11.8% of its read bandwidth; 7.84 and 44.4% with the
// row walk, 12.81 and 13.09 (71-81%) with the FP4 byte tables, docs/PERFORMANCE.md.)
template <QuantFormat F, int M, class Sums>
void gemv_columns256(Sums sums, const QuantizedWeight& W, int64_t n0, int64_t n1, const Tensor& bias, Tensor& C) {
  constexpr int P = 32 / format_bits(F), kParts = Sums::kParts, R = Sums::kRows;
  const int64_t K = W.K, N = W.N, rows_per_group = W.group_size / P;
  const int64_t vecs = (n1 - n0 + 7) / 8, stride = vecs * 8;
  const int tail = lanes8(n0, n1);
  const __m256i tail_mask = lane_mask8(tail);
  std::vector<float> acc(static_cast<size_t>(M * stride), 0.0f),
      partial(static_cast<size_t>(M * kParts * stride));
  const uint32_t* packed = W.packed.data<uint32_t>();
  const uint16_t* scales = static_cast<const uint16_t*>(W.scales.data_ptr());
  for (int64_t g = 0; g < K / W.group_size; ++g) {
    for (int64_t rr = 0; rr < rows_per_group; rr += R) {  // rows_per_group % R == 0
      const int64_t r = g * rows_per_group + rr;
      const uint32_t* row = packed + r * N + n0;
      const bool first = rr == 0, last = rr + R == rows_per_group;
      const uint32_t* ahead = r + R - 1 + kAhead < K / P ? row + kAhead * N : nullptr;
      sums.start_rows(r);
      for (int64_t v = 0; v < vecs; ++v) {
        const bool is_tail = v == vecs - 1;
        __m256i w[R];
        for (int j = 0; j < R; ++j) {
          const uint32_t* src = row + j * N + v * 8;
          if (ahead && v % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + j * N + v * 8), _MM_HINT_T0);
          // A plain load but for the last vector (vpmaskmovd costs more than a load on AMD).
          w[j] = is_tail ? _mm256_maskload_epi32(reinterpret_cast<const int*>(src), tail_mask)
                         : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        }
        __m256 p[M][kParts];
        for (int m = 0; m < M; ++m)
          for (int j = 0; j < kParts; ++j)
            p[m][j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(partial.data() + ((m * vecs + v) * kParts + j) * 8);
        sums.add(w, p);
        if (last) {
          const __m256 s = _mm256_cvtph_ps(load_u16x8(scales + g * N + n0 + v * 8, is_tail ? tail : 8));
          for (int m = 0; m < M; ++m) {
            float* out = acc.data() + m * stride + v * 8;
            _mm256_storeu_ps(out, _mm256_fmadd_ps(Sums::columns(p[m]), s, _mm256_loadu_ps(out)));
          }
        } else {
          for (int m = 0; m < M; ++m)
            for (int j = 0; j < kParts; ++j)
              _mm256_storeu_ps(partial.data() + ((m * vecs + v) * kParts + j) * 8, p[m][j]);
        }
      }
    }
  }
  store_gemv_columns<M>(acc, stride, n0, n1, N, bias, C);
}

template <QuantFormat F>
void gemv_rows(int64_t M, const std::vector<float>& a, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  dispatch_gemv_rows(M, [&](auto rows) {
    for_each_column_task(W.N, 8, [&](int64_t n0, int64_t n1) {
      constexpr int M = decltype(rows)::value;
      using Tables = std::conditional_t<F == QuantFormat::fp4_e2m1, Fp4Tables,
                                        std::conditional_t<F == QuantFormat::int2, Int2Tables, Fp8Tables>>;
      gemv_columns256<F, M>(ByteTableSums<Tables, M>{.a = a.data(), .K = W.K}, W, n0, n1, bias, C);
    });
  });
}

}  // namespace

#endif

#if defined(MARLIN_CPU_AVX512) || defined(MARLIN_CPU_AVX2)
// The vector width's gemv_rows (above) for every format.
bool gemv_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  const int64_t M = A.size(0);
  if (M > 4) return false;
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
