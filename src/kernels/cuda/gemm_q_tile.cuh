// The tile layout shared by the tensor-core GEMM kernels (gemm_q_mma.cu for M > 16,
// gemm_q_stream.cu for M <= 16): constants, the code-pair decoders, the mma and cp.async
// wrappers. The layout itself is described in gemm_q_mma.cu, which writes it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::cuda::tile {

constexpr int kUnitK = 32;
constexpr int kSlabN = 64;
// The tile layout pads K to whole rounds of units (zero codes, multiplied by zero activations),
// so the main loops need no per-unit bounds checks.
constexpr int kUnitsAlign = 8;
constexpr int kScaleRowBytes = kSlabN * 2;

// Inside a unit the mma's k index j = 16 step + 8 h + 2 c + e (c = lane % 4, e = the pair's
// element) stands for the weight row 8 c + 4 step + 2 h + e: a lane's A values for a whole unit
// are then 8 consecutive k (one 16-byte load), and A and the weights agree by construction.
__host__ __device__ constexpr int unit_row_of_mma_k(int j) {
  return 8 * ((j % 8) / 2) + 4 * (j / 16) + 2 * ((j / 8) % 2) + j % 2;
}

template <QuantFormat F>
struct MmaCodec;

template <>
struct MmaCodec<QuantFormat::fp4_e2m1> {
  static constexpr int kWords = 2;  // 16-byte words per lane per unit
  static constexpr int kPairsPerU32 = 4;
  static constexpr float kGroupScale = 16384.0f;  // undoes the decode's 2^-14 (f32 path)
  static constexpr float kHalfScale = 16384.0f;   // the same, folded into the fp16 scale
  // Pair p's code in each 16-bit half: sign at bit sign_bit(p), magnitude (e1 e0 m) at bits
  // mag_bit(p)..+2. Pair 0 sits where an f16 wants it (sign 15, magnitude 11..9) and pair 1 three
  // bits lower, so those two decode with one mask (and one shift); pairs 2 and 3 take two shifts.
  __host__ __device__ static constexpr int sign_bit(int p) { return p == 0 ? 15 : p == 1 ? 12 : p == 2 ? 14 : 13; }
  __host__ __device__ static constexpr int mag_bit(int p) { return 9 - 3 * p; }
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    if (p == 0) return q & 0x8e008e00u;
    if (p == 1) return (q << 3) & 0x8e008e00u;
    return ((q << (15 - sign_bit(p))) & 0x80008000u) | ((q << (9 - mag_bit(p))) & 0x0e000e00u);
  }
};

template <>
struct MmaCodec<QuantFormat::fp8_e4m3> {
  static constexpr int kWords = 4;
  static constexpr int kPairsPerU32 = 2;
  static constexpr float kGroupScale = 256.0f;
  static constexpr float kHalfScale = 256.0f;
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    if (p == 0) return q & 0xbf80bf80u;
    return ((q << p) & 0x80008000u) | ((q << (7 * p)) & 0x3f803f80u);
  }
};

template <>
struct MmaCodec<QuantFormat::int2> {
  static constexpr int kWords = 1;
  static constexpr int kPairsPerU32 = 8;
  // Pair p = 2 j + h (j = its tile % 4, h = its k half) keeps its two codes c, unchanged, at
  // bits field_bit(p).. of each half. A mask reads the h = 0 pairs in place and the h = 1 pairs
  // from q >> 8 (one shift a word): an f16 subnormal c * 4^j * 2^-24, exact, one logic op a pair
  // (the sign-magnitude form it replaced took two, and two more fp16 products in the scaled
  // path). The mma then sums codes, not values: the stream kernel takes 4^-j out per tile
  // (tile_factor) and adds -1.5 times the activations' group sum (kOffsetCodes); the scaled path
  // makes c - 1.5 exactly before the scale (b_register).
  static constexpr float kGroupScale = 16777216.0f;  // 2^24
  static constexpr float kHalfScale = 1.0f;
  static constexpr bool kOffsetCodes = true;
  __host__ __device__ static constexpr int field_bit(int p) { return 2 * (p / 2) + 8 * (p % 2); }
  __host__ __device__ static constexpr float tile_factor(int tile) {
    return tile % 4 == 0 ? 1.0f : tile % 4 == 1 ? 0.25f : tile % 4 == 2 ? 0.0625f : 0.015625f;
  }
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    return (p % 2 ? q >> 8 : q) & (0x00030003u << (2 * (p / 2)));
  }
};

// Formats whose decoded pairs are values (all but INT2): no per-tile factor, no offset.
template <QuantFormat F>
__host__ __device__ constexpr float tile_factor(int tile) {
  if constexpr (F == QuantFormat::int2) return MmaCodec<F>::tile_factor(tile);
  else return 1.0f;
}
template <QuantFormat F>
constexpr bool offset_codes() {
  if constexpr (F == QuantFormat::int2) return MmaCodec<F>::kOffsetCodes;
  else return false;
}

// Stage of a warp's stream: 2 KB of weights (4 words per lane) and the scale rows of the groups
// it touches (one per G units; G = 0, a group size known only at run time: one per unit).
template <QuantFormat F, int G>
struct Stage {
  static constexpr int kUnits = 4 / MmaCodec<F>::kWords;
  static constexpr int kWeightWords = kUnits * MmaCodec<F>::kWords * 32;  // uint4 per warp
  static constexpr int kScaleRows = G == 0 ? kUnits : (kUnits / G > 1 ? kUnits / G : 1);
  static constexpr int kBytes = kWeightWords * 16 + kScaleRows * kScaleRowBytes;
};

__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 as_half2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// Pair q of a lane's unit data (2 steps x 8 tiles x 2 halves, or x 4 tiles where a warp holds
// half a slab: gemm_q_batch.cu) as an mma B register: unscaled (group-scaled path) or times the
// fp16 scale. Called from fully unrolled loops, so q, the word index and the shifts are
// constants.
template <QuantFormat F, bool kScaled, int kN>
__device__ __forceinline__ uint32_t b_register(const uint32_t (&w)[kN], int q, __half2 scale) {
  using Cd = MmaCodec<F>;
  const uint32_t raw = Cd::pair(w[q / Cd::kPairsPerU32], q % Cd::kPairsPerU32);
  if constexpr (!kScaled) {
    return raw;
  } else {
    if constexpr (F == QuantFormat::int2) {
      // 1024 + c 4^j, exact; then c - 1.5, exact: one fma where 1024 / 4^j + 1.5 is an f16
      // (j >= 1), two steps at j = 0 (1025.5 is not).
      const int j = (q % Cd::kPairsPerU32) / 2;
      __half2 v = as_half2(raw | 0x64006400u);
      if (j == 0) {
        v = __hsub2(__hsub2(v, __float2half2_rn(1024.0f)), __float2half2_rn(1.5f));
      } else {
        const float inv = Cd::tile_factor(j);
        v = __hfma2(v, __float2half2_rn(inv), __float2half2_rn(-(1024.0f * inv + 1.5f)));
      }
      return as_u32(__hmul2(v, scale));
    } else {
      return as_u32(__hmul2(as_half2(raw), scale));
    }
  }
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
// Zero-fills the 16 bytes instead of reading when `read` is false (A past K).
__device__ __forceinline__ void cp_async16_or_zero(void* smem, const void* gmem, bool read) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(read ? 16 : 0));
}
// A decode step reads each weight once, and its weights (gigabytes) pass through L2 many times
// over, evicting what the next kernels read again: their code, activations, split-K partials.
// Weights read under an evict_first policy leave those in L2 (H200, Llama-3.1-8B batch 1: FP8
// 353.03 against 342.95 tok/s, GLM-4.7-Flash FP4 278.39 against 269.80).
__device__ __forceinline__ uint64_t weight_l2_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void cp_async16_policy(void* smem, const void* gmem, uint64_t policy) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "l"(policy));
}
// kAllocateL1: allocated in L1 too, where a lane's two loads are the halves of 32-byte sectors
// (moe_canon.cuh's load_unit_words).
template <bool kAllocateL1 = false>
__device__ __forceinline__ uint4 ldg_nc_policy(const void* gmem, uint64_t policy) {
  uint4 v;
  if constexpr (kAllocateL1)
    asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(gmem), "l"(policy));
  else
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(gmem), "l"(policy));
  return v;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// bf16 activations run on the f16 tensor cores: staged as f16 times 2^-4 (saturating), which
// keeps values up to about 1e6 finite and bf16's 8 bits of precision exact down to about 1e-3;
// the accumulators are multiplied back before the store.
constexpr float kBf16Prescale = 0.0625f;

// bf16 x2 -> f16 x2 times 2^-4 (kBf16Prescale), saturating (NaN stays NaN).
__device__ __forceinline__ uint32_t bf16x2_as_scaled_f16x2(uint32_t v) {
  const float lo = __uint_as_float(v << 16) * kBf16Prescale;
  const float hi = __uint_as_float(v & 0xffff0000u) * kBf16Prescale;
  uint32_t out;
  asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(out) : "f"(hi), "f"(lo));
  return out;
}

// Two activations (a 32-bit word) as the mma's f16 operand: f16 as they are, bf16 by
// bf16x2_as_scaled_f16x2.
template <typename TA>
__device__ __forceinline__ uint32_t activation_pair_as_f16(uint32_t v) {
  if constexpr (std::is_same_v<TA, __half>) return v;
  else return bf16x2_as_scaled_f16x2(v);
}

// Eight activations as the mma's f16 operand.
template <typename TA>
__device__ __forceinline__ uint4 activations_as_f16(uint4 v) {
  return make_uint4(activation_pair_as_f16<TA>(v.x), activation_pair_as_f16<TA>(v.y), activation_pair_as_f16<TA>(v.z),
                    activation_pair_as_f16<TA>(v.w));
}

template <typename TA>
__device__ __forceinline__ uint4 stage_as_f16(uint4 v) {
  if constexpr (std::is_same_v<TA, __half>) {
    return v;
  } else {
    const __nv_bfloat162* in = reinterpret_cast<const __nv_bfloat162*>(&v);
    uint4 out;
    __half2* o = reinterpret_cast<__half2*>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __bfloat1622float2(in[i]);
      f.x = fminf(fmaxf(f.x * kBf16Prescale, -65504.0f), 65504.0f);
      f.y = fminf(fmaxf(f.y * kBf16Prescale, -65504.0f), 65504.0f);
      o[i] = __float22half2_rn(f);
    }
    return out;
  }
}

__host__ __device__ inline int64_t padded_units(int64_t K) {
  return (K / kUnitK + kUnitsAlign - 1) / kUnitsAlign * kUnitsAlign;
}

__host__ __device__ inline int slabs_for(int64_t N) { return static_cast<int>((N + kSlabN - 1) / kSlabN); }

template <QuantFormat F>
int64_t weight_words(int64_t K, int64_t N) {
  return slabs_for(N) * padded_units(K) * MmaCodec<F>::kWords * 128;
}
// u32 words of the scale stream: [slab][group][64] f16, groups over the padded K.
inline int64_t scale_words(int64_t K, int64_t N, int group_size) {
  return slabs_for(N) * (padded_units(K) * kUnitK / group_size) * kSlabN / 2;
}


}  // namespace marlin::cuda::tile

namespace marlin::cuda {
// C[M <= 16, N] = A @ W over W.tiled (gemm_q_stream.cu).
void gemm_q_stream(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                   cudaStream_t stream);
// C[1, N] = (silu(gate) * up) @ W over W.tiled, the product rounded as silu_mul rounds it (so C
// is gemm_q_stream's of silu_mul's output); false, doing nothing, where it does not apply (more
// than one row, a format other than FP8, rows not 16-byte aligned).
bool gemm_q_stream_silu_mul(const Tensor& gate, const Tensor& up, const QuantizedWeight& W, const Tensor& bias,
                            Tensor& C, cudaStream_t stream);
// C[M <= 64, N] = A @ W over W.tiled with the K splits of a block's slabs summed by the block
// (gemm_q_batch.cu), or nothing where another kernel is faster: where its grid would leave
// most SMs idle (dequantize + cuBLAS), or its splits would be long at M <= 32 (the per-slab
// kernel of gemm_q_mma.cu).
enum class BatchLaunch { launched, grid_too_small, long_splits };
BatchLaunch gemm_q_batch(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                         cudaStream_t stream);
}  // namespace marlin::cuda
