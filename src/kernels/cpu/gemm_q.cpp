// CPU GEMM over quantized or dense weights. Each task owns a block of output columns and rows:
// it decodes a [k-chunk, 64] tile of the weight to f32 once and streams every row of A through
// it, so each weight is decoded once per row block and the inner loop vectorizes over columns.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/scalar_io.h"
#include "marlin/thread_pool.h"
#include "quant/formats.h"

namespace marlin::cpu {
namespace {

constexpr int64_t kColumnBlock = 64;
constexpr int64_t kRowBlock = 64;

// tile[kk][j] = W[k0 + kk][n0 + j] for kk < rows, j < width; columns past width are zero.
using TileLoader = void (*)(const void* ctx, int64_t k0, int64_t rows, int64_t n0,
                            int64_t width, float* tile);

struct QuantContext {
  const QuantizedWeight* w;
};

#ifdef MARLIN_CPU_AVX2
// Decodes 8 columns at a time: FP4 and INT2 through an in-register 8-entry table (permute),
// FP8 through a gather from the 256-entry table. Returns how many columns it did.
int64_t decode_row_avx2(QuantFormat format, const uint32_t* row, int shift, const float* scale,
                        const float* table, int64_t width, float* t) {
  const __m128i count = _mm_cvtsi32_si128(shift);
  int64_t j = 0;
  if (format == QuantFormat::fp4_e2m1) {
    const __m256 magnitudes = _mm256_loadu_ps(table);  // codes 0..7 are the positive values
    for (; j + 8 <= width; j += 8) {
      const __m256i codes = _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)), count);
      const __m256 mag = _mm256_permutevar8x32_ps(magnitudes, codes);  // uses the low 3 bits
      const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(codes, _mm256_set1_epi32(8)), 28);
      const __m256 value = _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
      _mm256_storeu_ps(t + j, _mm256_mul_ps(value, _mm256_loadu_ps(scale + j)));
    }
  } else if (format == QuantFormat::int2) {
    const __m256 levels = _mm256_setr_ps(table[0], table[1], table[2], table[3], table[0], table[1], table[2], table[3]);
    for (; j + 8 <= width; j += 8) {
      const __m256i codes = _mm256_and_si256(
          _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)), count), _mm256_set1_epi32(3));
      _mm256_storeu_ps(t + j, _mm256_mul_ps(_mm256_permutevar8x32_ps(levels, codes), _mm256_loadu_ps(scale + j)));
    }
  } else {
    for (; j + 8 <= width; j += 8) {
      const __m256i codes = _mm256_and_si256(
          _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)), count), _mm256_set1_epi32(255));
      _mm256_storeu_ps(t + j, _mm256_mul_ps(_mm256_i32gather_ps(table, codes, 4), _mm256_loadu_ps(scale + j)));
    }
  }
  return j;
}
#endif

void load_quant_tile(const void* ctx, int64_t k0, int64_t rows, int64_t n0, int64_t width,
                     float* tile) {
  const QuantizedWeight& w = *static_cast<const QuantContext*>(ctx)->w;
  const int bits = format_bits(w.format), P = format_values_per_word(w.format);
  const uint32_t mask = (1u << bits) - 1u;
  const uint32_t* packed = w.packed.data<uint32_t>();
  const uint16_t* scales = static_cast<const uint16_t*>(w.scales.data_ptr());
  // Decode tables: at most 256 entries, built per call of the tile (cheap next to the tile).
  float table[256];
  for (uint32_t c = 0; c <= mask; ++c) table[c] = quant::decode(w.format, c);
  float scale[kColumnBlock];
  int64_t group = -1;
  for (int64_t kk = 0; kk < rows; ++kk) {
    const int64_t k = k0 + kk;
    if (k / w.group_size != group) {
      group = k / w.group_size;
      for (int64_t j = 0; j < width; ++j) scale[j] = half_bits_to_float(scales[group * w.N + n0 + j]);
    }
    const uint32_t* row = packed + (k / P) * w.N + n0;
    const int shift = bits * static_cast<int>(k % P);
    float* t = tile + kk * kColumnBlock;
    int64_t j = 0;
#ifdef MARLIN_CPU_AVX2
    j = decode_row_avx2(w.format, row, shift, scale, table, width, t);
#endif
    for (; j < width; ++j) t[j] = table[(row[j] >> shift) & mask] * scale[j];
    for (j = width; j < kColumnBlock; ++j) t[j] = 0.0f;
  }
}

struct DenseContext {
  const Tensor* b;
};

void load_dense_tile(const void* ctx, int64_t k0, int64_t rows, int64_t n0, int64_t width,
                     float* tile) {
  const Tensor& b = *static_cast<const DenseContext*>(ctx)->b;
  const int64_t N = b.size(1);
  for (int64_t kk = 0; kk < rows; ++kk) {
    float* t = tile + kk * kColumnBlock;
    int64_t j = 0;
#ifdef MARLIN_CPU_AVX2
    const uint16_t* src = static_cast<const uint16_t*>(b.data_ptr()) + (k0 + kk) * N + n0;
    if (b.dtype() == DType::f16) {
      for (; j + 8 <= width; j += 8)
        _mm256_storeu_ps(t + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
    } else if (b.dtype() == DType::bf16) {  // bf16 is the top half of an f32
      for (; j + 8 <= width; j += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j)));
        _mm256_storeu_ps(t + j, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
      }
    }
#endif
    for (; j < width; ++j) t[j] = load_scalar(b.data_ptr(), b.dtype(), (k0 + kk) * N + n0 + j);
    for (j = width; j < kColumnBlock; ++j) t[j] = 0.0f;
  }
}

// c[0:64] += sum over kk of a[kk] * tile[kk][0:64]. The 64 sums stay in eight AVX registers
// for the whole chunk.
void accumulate_row(const float* a, const float* tile, int64_t rows, float* c) {
#ifdef MARLIN_CPU_AVX2
  static_assert(kColumnBlock == 64, "the AVX2 path holds 64 columns in 8 registers");
  __m256 c0 = _mm256_loadu_ps(c), c1 = _mm256_loadu_ps(c + 8), c2 = _mm256_loadu_ps(c + 16),
         c3 = _mm256_loadu_ps(c + 24), c4 = _mm256_loadu_ps(c + 32), c5 = _mm256_loadu_ps(c + 40),
         c6 = _mm256_loadu_ps(c + 48), c7 = _mm256_loadu_ps(c + 56);
  for (int64_t kk = 0; kk < rows; ++kk) {
    const __m256 av = _mm256_broadcast_ss(a + kk);
    const float* t = tile + kk * kColumnBlock;
    c0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t), c0);
    c1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 8), c1);
    c2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 16), c2);
    c3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 24), c3);
    c4 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 32), c4);
    c5 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 40), c5);
    c6 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 48), c6);
    c7 = _mm256_fmadd_ps(av, _mm256_loadu_ps(t + 56), c7);
  }
  _mm256_storeu_ps(c, c0);
  _mm256_storeu_ps(c + 8, c1);
  _mm256_storeu_ps(c + 16, c2);
  _mm256_storeu_ps(c + 24, c3);
  _mm256_storeu_ps(c + 32, c4);
  _mm256_storeu_ps(c + 40, c5);
  _mm256_storeu_ps(c + 48, c6);
  _mm256_storeu_ps(c + 56, c7);
#else
  for (int64_t kk = 0; kk < rows; ++kk) {
    const float av = a[kk];
    const float* t = tile + kk * kColumnBlock;
    for (int64_t j = 0; j < kColumnBlock; ++j) c[j] += av * t[j];
  }
#endif
}

void gemm_tiled(const Tensor& A, int64_t K, int64_t N, int64_t k_chunk, TileLoader load,
                const void* ctx, const Tensor& bias, Tensor& C) {
  const int64_t M = A.size(0);
  const std::vector<float> a = to_f32(A);
  const int64_t col_blocks = (N + kColumnBlock - 1) / kColumnBlock;
  const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
  parallel_for(0, col_blocks * row_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(static_cast<size_t>(k_chunk * kColumnBlock));
    std::vector<float> acc(static_cast<size_t>(kRowBlock * kColumnBlock));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = (task % col_blocks) * kColumnBlock;
      const int64_t m0 = (task / col_blocks) * kRowBlock;
      const int64_t width = std::min(kColumnBlock, N - n0);
      const int64_t rows = std::min(kRowBlock, M - m0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += k_chunk) {
        const int64_t kc = std::min(k_chunk, K - k0);
        load(ctx, k0, kc, n0, width, tile.data());
        for (int64_t m = 0; m < rows; ++m)
          accumulate_row(a.data() + (m0 + m) * K + k0, tile.data(), kc, acc.data() + m * kColumnBlock);
      }
      for (int64_t m = 0; m < rows; ++m) {
        for (int64_t j = 0; j < width; ++j) {
          float v = acc[static_cast<size_t>(m * kColumnBlock + j)];
          if (bias.defined()) v += load_scalar(bias.data_ptr(), bias.dtype(), n0 + j);
          store_scalar(C.data_ptr(), C.dtype(), (m0 + m) * N + n0 + j, v);
        }
      }
    }
  });
}

}  // namespace

void gemm_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  if (gemv_q(A, W, bias, C)) return;
  QuantContext ctx{&W};
  gemm_tiled(A, W.K, W.N, W.group_size, load_quant_tile, &ctx, bias, C);
}

void gemm(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C) {
  if (gemv(A, B, bias, C)) return;
  DenseContext ctx{&B};
  gemm_tiled(A, B.size(0), B.size(1), 128, load_dense_tile, &ctx, bias, C);
}

}  // namespace marlin::cpu
