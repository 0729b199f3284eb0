// Tensor-core quantized GEMM (f16 or bf16 activations, M up to 64) over weights repacked once
// into a streaming tile layout (ops::prepare_for_gemm).
//
// Tile layout: K is cut into units of 32 rows (padded to whole rounds of kUnitsAlign units) and
// N into slabs of 64 columns. For one (slab, unit), lane L of a warp owns the mma.m16n8k16 B
// fragments of 2 k16 steps x 8 n8 tiles: for step s, tile t and half h, the pair
// {B[k][n], B[k+1][n]} with k = 32u + 16s + 2(L%4) + 8h and n = 64b + 8t + L/4. Those 32 pairs
// are NW 16-byte words per lane; the words of a slab are stored unit after unit, so one warp
// streams one contiguous range per slab. Each u32 holds 16/bits pairs, one code of a pair in
// each half, with the sign bits apart from the rest so that pair 0 is one AND and the others
// two shifts (which the compiler issues on the FMA pipe) and two logic ops, no conversions:
//   FP4 pair p: sign at bit 15-p, exponent+mantissa at bits 11-3p..9-3p of each half
//               -> ((q << p) & 0x80008000) | ((q << 3p) & 0x0e000e00) = value * 2^-14
//   FP8 pair p: sign at bit 15-p, exponent+mantissa at bits 13-7p..7-7p of each half
//               -> ((q << p) & 0x80008000) | ((q << 7p) & 0x3f803f80) = value * 2^-8
//   INT2 pair p: the code c is stored as a sign bit (c < 2) at bit 8+p and a magnitude bit
//                (c is 0 or 3) at bit p of each half -> (x & 0x80808080) | 0x00400040,
//                x = q << (7 - p): an f16 subnormal +-(1 or 3) * 2^-18 = (c - 1.5) * 2^-17
// After the weights come the scales, [slab][group][64] f16, so a stage of the stream carries
// the scales it needs.
//
// Each warp copies its slab's stream into a private ring of shared-memory stages with cp.async
// (kStages - 1 stages in flight: enough bytes in flight per SM to reach DRAM bandwidth with few
// warps), so no lane ever reads another lane's weights. At M <= 16 the mma runs on the unscaled
// codes and each group's f32 partial sums are scaled once per group (no fp16 multiply per
// pair); larger M tiles scale the pairs in fp16 before the mma (an f16 rounding of the weight,
// as Marlin does). A is staged in shared memory and read with ldmatrix; accumulation is f32.
// K splits across blocks are summed by the last block of each column range (deterministic).
#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/split_k.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kUnitK = 32;
constexpr int kSlabN = 64;
constexpr int kStages = 4;  // per warp: one being computed, three in flight
// k values of A staged in shared memory per step: 16.6 KB for the M <= 16 tile (four blocks
// fit an SM), 33 KB for the larger ones.
template <int MT>
constexpr int chunk_k() {
  return MT == 1 ? 512 : 1024 / MT;
}
constexpr int kRowPad = 8;  // halves of padding per A row: conflict-free ldmatrix
constexpr int kMaxMmaM = 64;
// The tile layout pads K to whole rounds of units (zero codes, multiplied by zero activations),
// so the main loop needs no per-unit bounds checks.
constexpr int kUnitsAlign = 8;
constexpr int kScaleRowBytes = kSlabN * 2;

bool force_tiled_gemm = false;

template <QuantFormat F>
struct MmaCodec;

template <>
struct MmaCodec<QuantFormat::fp4_e2m1> {
  static constexpr int kWords = 2;  // 16-byte words per lane per unit
  static constexpr int kPairsPerU32 = 4;
  static constexpr float kGroupScale = 16384.0f;  // undoes the decode's 2^-14 (f32 path)
  static constexpr float kHalfScale = 16384.0f;   // the same, folded into the fp16 scale
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    if (p == 0) return q & 0x8e008e00u;
    return ((q << p) & 0x80008000u) | ((q << (3 * p)) & 0x0e000e00u);
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
  static constexpr float kGroupScale = 131072.0f;  // (c - 1.5) = decoded * 2^17
  // The fp16 path first makes the subnormal normal (times 2^12, exact), then scales by s * 2^5.
  static constexpr float kHalfScale = 32.0f;
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    return ((q << (7 - p)) & 0x80808080u) | 0x00400040u;
  }
};

// Stage of a warp's stream: 2 KB of weights (4 words per lane) and the scale rows of the groups
// it touches (one per G units; G = 0, a group size known only at run time: one per unit).
template <QuantFormat F, int G>
struct Stage {
  static constexpr int kUnits = 4 / MmaCodec<F>::kWords;
  static constexpr int kWeightWords = kUnits * MmaCodec<F>::kWords * 32;  // uint4 per warp
  static constexpr int kScaleRows = G == 0 ? kUnits : (kUnits / G > 1 ? kUnits / G : 1);
  static constexpr int kBytes = kWeightWords * 16 + kScaleRows * kScaleRowBytes;
};

template <int MT>
constexpr int a_smem_bytes() {
  return MT * 16 * (chunk_k<MT>() + kRowPad) * 2;
}
template <QuantFormat F, int MT, int G>
constexpr int smem_bytes() {
  return a_smem_bytes<MT>() + kMmaWarps * kStages * Stage<F, G>::kBytes;
}

__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 as_half2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// Pair q of a lane's unit data (2 steps x 8 tiles x 2 halves) as an mma B register: unscaled
// (group-scaled path) or times the fp16 scale. Called from fully unrolled loops, so q, the word
// index and the shifts are constants.
template <QuantFormat F, bool kScaled>
__device__ __forceinline__ uint32_t b_register(const uint32_t (&w)[MmaCodec<F>::kWords * 4], int q,
                                               __half2 scale) {
  using Cd = MmaCodec<F>;
  const uint32_t raw = Cd::pair(w[q / Cd::kPairsPerU32], q % Cd::kPairsPerU32);
  if constexpr (!kScaled) {
    return raw;
  } else {
    __half2 v = as_half2(raw);
    if constexpr (F == QuantFormat::int2) v = __hmul2(v, __float2half2_rn(4096.0f));
    return as_u32(__hmul2(v, scale));
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
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// bf16 activations run on the f16 tensor cores: staged as f16 times 2^-4 (saturating), which
// keeps values up to about 1e6 finite and bf16's 8 bits of precision exact down to about 1e-3;
// the accumulators are multiplied back before the store.
constexpr float kBf16Prescale = 0.0625f;

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

// G: units per scale group (1, 2, 4 or 8) when known at compile time (the M <= 16 tile, whose
// per-group f32 scaling then costs no per-unit branches); 0 for the larger tiles.
template <QuantFormat F, int MT, int G, typename TA>
__global__ void __launch_bounds__(kMmaThreads, MT == 1 ? 4 : 1)
    gemm_q_mma_kernel(const TA* __restrict__ A, const uint4* __restrict__ weights,
                      const uint4* __restrict__ scale_stream, const void* __restrict__ bias,
                      BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                      unsigned* __restrict__ counters, int M, int N, int K, int units,
                      int group_size, int units_per_split, int slabs) {
  using Cd = MmaCodec<F>;
  using St = Stage<F, G>;
  constexpr int kW = Cd::kWords;
  constexpr int kU = St::kUnits;
  constexpr int kChunkK = chunk_k<MT>();
  constexpr int kUnitsPerChunk = kChunkK / kUnitK;
  constexpr bool kGroupAcc = MT == 1;
  static_assert(kUnitsPerChunk % kU == 0 && kUnitsAlign % kU == 0,
                "stages must not straddle an A chunk or a split");
  static_assert(kGroupAcc == (G > 0), "the group size is a template argument exactly for M <= 16");
  extern __shared__ __align__(16) unsigned char smem[];
  auto a_s = reinterpret_cast<__half(*)[kChunkK + kRowPad]>(smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* ring = smem + a_smem_bytes<MT>() + warp * kStages * St::kBytes;
  const int slab = blockIdx.x * kMmaWarps + warp;
  const bool active = slab < slabs;
  const int unit0 = blockIdx.y * units_per_split;
  const int nstages = min(units_per_split, units - unit0) / kU;  // whole: both are multiples of 8
  const int kbeg = unit0 * kUnitK;
  const int kend = min(K, kbeg + nstages * kU * kUnitK);
  const int units_per_group = G > 0 ? G : group_size / kUnitK;  // 1, 2, 4 or 8
  const int group_shift = G > 0 ? __ffs(G) - 1 : __ffs(units_per_group) - 1;
  const unsigned group_mask = static_cast<unsigned>(units_per_group) - 1u;
  const int rows_per_stage = max(1, kU >> group_shift);
  const int groups = units >> group_shift;
  static_assert(St::kScaleRows * (kScaleRowBytes / 16) <= 32, "one 16-byte scale copy per lane");
  const uint4* w_src = weights + (static_cast<int64_t>(slab) * units + unit0) * kW * 32 + lane;
  const uint4* s_src = scale_stream + (static_cast<int64_t>(slab) * groups + (unit0 >> group_shift)) *
                                          (kScaleRowBytes / 16);

  // Stage s of this warp's range into ring slot s % kStages; always commits a group, so the
  // wait counts stay uniform at the tail.
  auto issue = [&](int s) {
    if (active && s < nstages) {
      uint4* dst = reinterpret_cast<uint4*>(ring + (s % kStages) * St::kBytes);
      const uint4* src = w_src + s * St::kWeightWords;
#pragma unroll
      for (int i = 0; i < kU * kW; ++i) cp_async16(dst + i * 32 + lane, src + i * 32);
      if (lane < rows_per_stage * (kScaleRowBytes / 16))
        cp_async16(dst + St::kWeightWords + lane, s_src + ((s * kU) >> group_shift) * (kScaleRowBytes / 16) + lane);
    }
    cp_async_commit();
  };
  auto stage_a = [&](int unit) {
    __syncthreads();
    // A[0 : 16 MT, kc : kc + kChunkK) as f16, zeros past M, K and the split's end. K and the
    // split bounds are multiples of 32, so each 8-wide vector is wholly in or out. Rows past M
    // stay zero from the first chunk on, so later chunks write only the M real rows.
    const int kc = kbeg + unit * kUnitK;
    constexpr int kVecPerRow = kChunkK / 8;
    const int rows = unit == 0 ? MT * 16 : min(M, MT * 16);
    for (int i = threadIdx.x; i < rows * kVecPerRow; i += kMmaThreads) {
      const int row = i / kVecPerRow, col = (i % kVecPerRow) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row < M && kc + col < kend)
        v = stage_as_f16<TA>(*reinterpret_cast<const uint4*>(A + static_cast<int64_t>(row) * K + kc + col));
      *reinterpret_cast<uint4*>(&a_s[row][col]) = v;
    }
    __syncthreads();
  };

  float acc[MT][8][4];
  float gacc[kGroupAcc ? 8 : 1][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][t][i] = 0.0f;

  const __half* a_lane = &a_s[lane % 16][(lane / 16) * 8];
  __half2 s2[8];  // the fp16 scales of the current group (M > 16 tiles)
#pragma unroll
  for (int t = 0; t < 8; ++t) s2[t] = __float2half2_rn(0.0f);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s);
  // With groups longer than a stage, the stages of one group form an unrolled inner loop, so
  // the group's start and end are compile-time positions (nstages is a multiple: splits are
  // whole rounds of kUnitsAlign units).
  constexpr int kStagesPerGroup = G > kU ? G / kU : 1;
  for (int s0 = 0; s0 < nstages; s0 += kStagesPerGroup) {
#pragma unroll
  for (int ss = 0; ss < kStagesPerGroup; ++ss) {
    const int s = s0 + ss;
    cp_async_wait<kStages - 2>();
    __syncwarp();  // the scale rows other lanes copied; the slot computed last is free again
    issue(s + kStages - 1);
    if ((s * kU) % kUnitsPerChunk == 0) stage_a(s * kU);
    if (!active) continue;
    const uint4* slot = reinterpret_cast<const uint4*>(ring + (s % kStages) * St::kBytes);
    const __half* srows = reinterpret_cast<const __half*>(slot + St::kWeightWords);
    const int stage_group = (unit0 + s * kU) >> group_shift;
#pragma unroll
    for (int a = 0; a < kU; ++a) {
      const unsigned unit = static_cast<unsigned>(unit0 + s * kU + a);
      const __half* srow = srows + (static_cast<int>(unit >> group_shift) - stage_group) * kSlabN;
      uint32_t w[kW * 4];
#pragma unroll
      for (int j = 0; j < kW; ++j) {
        const uint4 v = slot[(a * kW + j) * 32 + lane];
        w[4 * j] = v.x;
        w[4 * j + 1] = v.y;
        w[4 * j + 2] = v.z;
        w[4 * j + 3] = v.w;
      }
      // Group boundaries: constants when a group fits in a stage, else one test per stage.
      bool group_start, group_end;
      if constexpr (kGroupAcc && G <= kU) {
        group_start = a % G == 0;
        group_end = a % G == G - 1;
      } else if constexpr (kGroupAcc) {
        group_start = ss == 0 && a == 0;
        group_end = ss == kStagesPerGroup - 1 && a == kU - 1;
      } else {
        group_start = (unit & group_mask) == 0;
        group_end = false;
      }
      if (group_start) {
        if constexpr (kGroupAcc) {
#pragma unroll
          for (int t = 0; t < 8; ++t)
#pragma unroll
            for (int i = 0; i < 4; ++i) gacc[t][i] = 0.0f;
        } else {
#pragma unroll
          for (int t = 0; t < 8; ++t)
            s2[t] = __float2half2_rn(__half2float(srow[t * 8 + lane / 4]) * Cd::kHalfScale);
        }
      }
      const __half* a_unit = a_lane + ((s * kU + a) % kUnitsPerChunk) * kUnitK;
#pragma unroll
      for (int step = 0; step < 2; ++step) {
        uint32_t afrag[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(afrag[mt], a_unit + mt * 16 * (kChunkK + kRowPad) + step * 16);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const uint32_t b0 = b_register<F, !kGroupAcc>(w, (step * 8 + t) * 2, s2[t]);
          const uint32_t b1 = b_register<F, !kGroupAcc>(w, (step * 8 + t) * 2 + 1, s2[t]);
          if constexpr (kGroupAcc) {
            mma_16816(gacc[t], afrag[0], b0, b1);
          } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) mma_16816(acc[mt][t], afrag[mt], b0, b1);
          }
        }
      }
      if constexpr (kGroupAcc) {
        if (group_end) {
          // The group's last unit: its columns' scales, once, in f32.
#pragma unroll
          for (int t = 0; t < 8; ++t) {
            const float2 sc = __half22float2(*reinterpret_cast<const __half2*>(srow + t * 8 + 2 * (lane % 4)));
            const float s0 = sc.x * Cd::kGroupScale, s1 = sc.y * Cd::kGroupScale;
            acc[0][t][0] = fmaf(gacc[t][0], s0, acc[0][t][0]);
            acc[0][t][1] = fmaf(gacc[t][1], s1, acc[0][t][1]);
            acc[0][t][2] = fmaf(gacc[t][2], s0, acc[0][t][2]);
            acc[0][t][3] = fmaf(gacc[t][3], s1, acc[0][t][3]);
          }
        }
      }
    }
  }
  }
  cp_async_wait<0>();

  // Fragment (mt, t, i) is C[16 mt + L/4 + 8 (i / 2)][64 slab + 8 t + 2 (L % 4) + i % 2].
  SplitKEpilogue<TA> epilogue{C, partials, counters, bias, bias_kind, M, N};
  constexpr float kUnscale = std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
  const bool split = gridDim.y > 1;
  if (active) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int t = 0; t < 8; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = mt * 16 + lane / 4 + 8 * (i / 2);
          const int col = slab * kSlabN + t * 8 + 2 * (lane % 4) + (i % 2);
          epilogue.store(row, col, acc[mt][t][i] * kUnscale, split);
        }
  }
  if (!split) return;
  const int col_begin = blockIdx.x * kMmaWarps * kSlabN;
  epilogue.reduce_if_last(col_begin, min(N, col_begin + kMmaWarps * kSlabN), MT * 16);
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
int64_t scale_words(int64_t K, int64_t N, int group_size) {
  return slabs_for(N) * (padded_units(K) * kUnitK / group_size) * kSlabN / 2;
}

// One thread per u32 of the weight stream: gathers its 16/bits pairs from the canonical layout.
template <QuantFormat F>
__global__ void repack_tiled_kernel(const uint32_t* __restrict__ packed, int64_t K, int64_t N,
                                    int64_t units, uint32_t* __restrict__ tiled) {
  using Cd = MmaCodec<F>;
  constexpr int bits = format_bits(F), P = 32 / bits;
  constexpr uint32_t mask = (1u << bits) - 1u;
  const int64_t total = slabs_for(N) * units * Cd::kWords * 128;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % 4);
    const int lane = static_cast<int>((idx / 4) % 32);
    const int j = static_cast<int>((idx / 128) % Cd::kWords);
    const int64_t slab_unit = idx / (128 * Cd::kWords);
    const int64_t unit = slab_unit % units;
    const int64_t slab = slab_unit / units;
    const int u32_index = j * 4 + c;
    uint32_t out = 0;
    for (int p = 0; p < Cd::kPairsPerU32; ++p) {
      const int q = u32_index * Cd::kPairsPerU32 + p;
      const int step = q / 16, t = (q / 2) % 8, h = q % 2;
      const int64_t k = unit * kUnitK + step * 16 + 2 * (lane % 4) + 8 * h;
      const int64_t n = slab * kSlabN + t * 8 + lane / 4;
      uint32_t codes[2] = {0, 0};
      if (n < N && k < K) {  // padding (past N or K) stays code 0
        for (int e = 0; e < 2; ++e)
          codes[e] = (packed[((k + e) / P) * N + n] >> (bits * ((k + e) % P))) & mask;
      }
      if constexpr (F == QuantFormat::fp4_e2m1) {
        for (int e = 0; e < 2; ++e)
          out |= ((codes[e] >> 3) << (15 - p) | (codes[e] & 7u) << (9 - 3 * p)) << (16 * e);
      } else if constexpr (F == QuantFormat::fp8_e4m3) {
        for (int e = 0; e < 2; ++e)
          out |= ((codes[e] >> 7) << (15 - p) | (codes[e] & 0x7fu) << (7 - 7 * p)) << (16 * e);
      } else {
        for (int e = 0; e < 2; ++e) {
          const uint32_t negative = codes[e] < 2 ? 1u : 0u;
          const uint32_t large = (codes[e] == 0 || codes[e] == 3) ? 1u : 0u;
          out |= (negative << (8 + p) | large << p) << (16 * e);
        }
      }
    }
    tiled[idx] = out;
  }
}

// One thread per scale of the stream: [slab][group][64] from the canonical [K/g, N] (zeros
// past N and past K's groups).
__global__ void repack_scales_kernel(const __half* __restrict__ scales, int64_t groups_real,
                                     int64_t groups, int64_t N, __half* __restrict__ out) {
  const int64_t total = slabs_for(N) * groups * kSlabN;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = idx % kSlabN, group = (idx / kSlabN) % groups, slab = idx / (kSlabN * groups);
    const int64_t n = slab * kSlabN + col;
    out[idx] = (n < N && group < groups_real) ? scales[group * N + n] : __float2half(0.0f);
  }
}

template <QuantFormat F, int MT, int G, typename TA>
int resident_blocks() {
  // Asked once per kernel and process: depends on the kernel and the GPU model.
  static const int blocks = [] {
    constexpr int bytes = smem_bytes<F, MT, G>();
    MARLIN_CUDA_CHECK(cudaFuncSetAttribute(gemm_q_mma_kernel<F, MT, G, TA>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                      "gemm_q");
    int n = 0;
    MARLIN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemm_q_mma_kernel<F, MT, G, TA>, kMmaThreads, bytes),
                      "gemm_q");
    return std::max(n, 1);
  }();
  return blocks;
}

// Launches unless the grid would leave most SMs idle (then the caller's dequantize + cuBLAS
// path is faster); returns whether it launched.
template <QuantFormat F, int MT, int G, typename TA>
bool launch_mma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                cudaStream_t stream) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int slabs = slabs_for(N);
  const int blocks_x = (slabs + kMmaWarps - 1) / kMmaWarps;
  // One wave: as many K splits as resident blocks allow, each covering whole rounds of units.
  // Split partials (splits x M x N floats, written and read once) are kept under half the
  // weight bytes.
  const int units = static_cast<int>(padded_units(K));
  const int sms = multiprocessor_count(device);
  const int capacity = resident_blocks<F, MT, G, TA>() * sms;
  const int by_traffic = static_cast<int>(static_cast<int64_t>(K) * format_bits(F) / (64 * static_cast<int64_t>(M)));
  const int max_splits = std::clamp(by_traffic, 1, units / kUnitsAlign);
  // One wave of resident blocks. (Measured on H200: more, shorter splits in several waves
  // were slower at M = 1, and their partials cost too much at M = 32-64.)
  int splits = std::clamp(capacity / blocks_x, 1, max_splits);
  int units_per_split = (units + splits - 1) / splits;
  units_per_split = (units_per_split + kUnitsAlign - 1) / kUnitsAlign * kUnitsAlign;
  splits = (units + units_per_split - 1) / units_per_split;
  if (M > 16 && blocks_x * splits < sms && !force_tiled_gemm) return false;
  SplitKBuffers buffers = split_k_buffers(device, splits, M, N, blocks_x);
  const uint32_t* stream_words = W.tiled.data<uint32_t>();
  gemm_q_mma_kernel<F, MT, G, TA><<<dim3(blocks_x, splits), kMmaThreads, smem_bytes<F, MT, G>(), stream>>>(
      static_cast<const TA*>(A.data_ptr()), reinterpret_cast<const uint4*>(stream_words),
      reinterpret_cast<const uint4*>(stream_words + weight_words<F>(K, N)),
      bias.defined() ? bias.data_ptr() : nullptr, bias_kind(bias.dtype(), bias.defined()),
      static_cast<TA*>(C.data_ptr()), buffers.partials, buffers.counters, M, N, K, units,
      W.group_size, units_per_split, slabs);
  MARLIN_CUDA_CHECK_LAUNCH("gemm_q");
  return true;
}

template <QuantFormat F>
bool dispatch_mma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                  cudaStream_t stream) {
  const int64_t M = A.size(0);
  bool launched = false;
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
    if (M <= 16) {
      switch (W.group_size / kUnitK) {
        case 1: launched = launch_mma<F, 1, 1, TA>(A, W, bias, C, stream); break;
        case 2: launched = launch_mma<F, 1, 2, TA>(A, W, bias, C, stream); break;
        case 4: launched = launch_mma<F, 1, 4, TA>(A, W, bias, C, stream); break;
        default: launched = launch_mma<F, 1, 8, TA>(A, W, bias, C, stream); break;
      }
    } else if (M <= 32) {
      launched = launch_mma<F, 2, 0, TA>(A, W, bias, C, stream);
    } else {
      launched = launch_mma<F, 4, 0, TA>(A, W, bias, C, stream);
    }
  });
  return launched;
}

template <QuantFormat F>
void repack(const QuantizedWeight& W, Tensor& tiled, cudaStream_t stream) {
  const int64_t words = weight_words<F>(W.K, W.N);
  unsigned blocks = static_cast<unsigned>(std::min<int64_t>((words + 255) / 256, 65535 * 4));
  repack_tiled_kernel<F><<<blocks, 256, 0, stream>>>(W.packed.data<uint32_t>(), W.K, W.N,
                                                     padded_units(W.K), tiled.data<uint32_t>());
  MARLIN_CUDA_CHECK_LAUNCH("prepare_for_gemm");
  const int64_t groups = padded_units(W.K) * kUnitK / W.group_size;
  const int64_t scales = scale_words(W.K, W.N, W.group_size) * 2;
  blocks = static_cast<unsigned>(std::min<int64_t>((scales + 255) / 256, 65535 * 4));
  repack_scales_kernel<<<blocks, 256, 0, stream>>>(
      static_cast<const __half*>(W.scales.data_ptr()), W.K / W.group_size, groups, W.N,
      reinterpret_cast<__half*>(tiled.data<uint32_t>() + words));
  MARLIN_CUDA_CHECK_LAUNCH("prepare_for_gemm");
}

}  // namespace

void set_force_tiled_gemm(bool on) { force_tiled_gemm = on; }

bool mma_supported(const QuantizedWeight& W, float max_abs_scale) {
  // M > 16 tiles multiply by the scale times a power of two in fp16: it must stay finite.
  // Group sizes are powers of two from 32 to 256, so groups are whole units.
  const float bias = W.format == QuantFormat::fp4_e2m1 ? 16384.0f : W.format == QuantFormat::fp8_e4m3 ? 256.0f : 32.0f;
  return W.K % kUnitK == 0 && W.group_size % kUnitK == 0 && W.group_size <= kUnitsAlign * kUnitK &&
         max_abs_scale * bias <= 65504.0f;
}

Tensor repack_tiled(const QuantizedWeight& W) {
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(W.device().index).handle);
  int64_t words = scale_words(W.K, W.N, W.group_size);
  switch (W.format) {
    case QuantFormat::fp4_e2m1: words += weight_words<QuantFormat::fp4_e2m1>(W.K, W.N); break;
    case QuantFormat::fp8_e4m3: words += weight_words<QuantFormat::fp8_e4m3>(W.K, W.N); break;
    case QuantFormat::int2: words += weight_words<QuantFormat::int2>(W.K, W.N); break;
  }
  Tensor tiled = Tensor::empty({words}, DType::u32, W.device());
  switch (W.format) {
    case QuantFormat::fp4_e2m1: repack<QuantFormat::fp4_e2m1>(W, tiled, stream); break;
    case QuantFormat::fp8_e4m3: repack<QuantFormat::fp8_e4m3>(W, tiled, stream); break;
    case QuantFormat::int2: repack<QuantFormat::int2>(W, tiled, stream); break;
  }
  return tiled;
}

bool gemm_q_tiled(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  if (!W.tiled.defined() || A.size(0) > kMaxMmaM) return false;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  switch (W.format) {
    case QuantFormat::fp4_e2m1: return dispatch_mma<QuantFormat::fp4_e2m1>(A, W, bias, C, stream);
    case QuantFormat::fp8_e4m3: return dispatch_mma<QuantFormat::fp8_e4m3>(A, W, bias, C, stream);
    case QuantFormat::int2: return dispatch_mma<QuantFormat::int2>(A, W, bias, C, stream);
  }
  return false;
}

void append_gemm_mma_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_mma_fp4_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp4_e2m1, 1, 4, __half>)});
  out.push_back({"gemm_mma_fp8_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp8_e4m3, 1, 4, __half>)});
  out.push_back({"gemm_mma_int2_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::int2, 1, 4, __half>)});
  out.push_back({"repack_tiled_fp4", reinterpret_cast<const void*>(&repack_tiled_kernel<QuantFormat::fp4_e2m1>)});
}

}  // namespace marlin::cuda
