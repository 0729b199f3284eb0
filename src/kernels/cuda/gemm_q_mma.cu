// Tensor-core quantized GEMM over weights repacked once into a streaming tile layout
// (ops::prepare_for_gemm): the layout, its repacking, and a per-slab kernel for 16 < M <= 64
// where gemm_q_batch.cu's K splits would be long (gemm_q_stream.cu has the M <= 16 kernel).
//
// Tile layout: K is cut into units of 32 rows (padded to whole rounds of kUnitsAlign units) and
// N into slabs of 64 columns. For one (slab, unit), lane L of a warp owns the mma.m16n8k16 B
// fragments of 2 k16 steps x 8 n8 tiles: for step s, tile t and half h, the pair
// {B[k][n], B[k+1][n]} with mma index k = 16s + 8h + 2(L%4) and n = 64b + 8t + L/4, where mma
// index k stands for weight row 32u + unit_row_of_mma_k(k) (gemm_q_tile.cuh: a lane's A values
// of a unit are then contiguous). Those 32 pairs are NW 16-byte words per lane; the words of a
// slab are stored unit after unit, and the slabs one after another, so the whole weight is one
// stream that warps can split anywhere on round boundaries. Each u32 holds 16/bits pairs, one
// code of a pair in each half; FP4 and FP8 keep the sign bits apart from the rest so that pair 0
// is one AND and the others two shifts (which the compiler issues on the FMA pipe) and two logic
// ops:
//   FP4 pair p: sign at bit 15, 12, 14, 13 (p = 0..3), exponent+mantissa at bits 11-3p..9-3p of
//               each half -> q & 0x8e008e00 (p = 0), (q << 3) & 0x8e008e00 (p = 1), else
//               ((q << (15 - sign bit)) & 0x80008000) | ((q << 3p) & 0x0e000e00) = value * 2^-14
//   FP8 pair p: sign at bit 15-p, exponent+mantissa at bits 13-7p..7-7p of each half
//               -> ((q << p) & 0x80008000) | ((q << 7p) & 0x3f803f80) = value * 2^-8
//   INT2 pair p = 2j + h: the code c itself at bits 2j + 8h.. of each half -> (x & (3 << 2j)),
//                x = q (h = 0) or q >> 8 (h = 1): an f16 subnormal c * 4^j * 2^-24, a code, not a
//                value (MmaCodec<int2> in gemm_q_tile.cuh says how the kernels make it one)
// After the weights come the scales, [slab][group][64] f16, in the same order.
//
// The per-slab kernel: each warp owns a slab and a block's K split, and copies its part of the
// stream into a private ring of shared-memory stages with cp.async (kStages - 1 in flight), so
// no lane reads another lane's weights. The pairs are scaled in fp16 before the mma (an f16
// rounding of the weight, as Marlin does); A is staged in shared memory in mma k order and read
// with ldmatrix; accumulation is f32. K splits are summed by the last block of each column range.
#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/gemm_q_wgmma.h"
#include "kernels/cuda/split_k.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using namespace tile;

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kStages = 4;  // per warp: one being computed, three in flight
// k values of A staged in shared memory per step: 33 KB per block.
template <int MT>
constexpr int chunk_k() {
  return 1024 / MT;
}
constexpr int kRowPad = 8;  // halves of padding per A row: conflict-free ldmatrix
constexpr int kMaxMmaM = 64;

bool force_tiled_gemm = false;
// MARLIN_BATCH_GEMM=0: M > 16 on this file's per-slab kernel wherever it applies, instead of
// gemm_q_batch.cu's (to measure both; tests set it).
bool per_slab_gemm = env_is("MARLIN_BATCH_GEMM", "0");

template <int MT>
constexpr int a_smem_bytes() {
  return MT * 16 * (chunk_k<MT>() + kRowPad) * 2;
}
template <QuantFormat F, int MT>
constexpr int smem_bytes() {
  return a_smem_bytes<MT>() + kMmaWarps * kStages * Stage<F, 0>::kBytes;
}

template <QuantFormat F, int MT, typename TA>
__global__ void __launch_bounds__(kMmaThreads)
    gemm_q_mma_kernel(const TA* __restrict__ A, const uint4* __restrict__ weights,
                      const uint4* __restrict__ scale_stream, const void* __restrict__ bias,
                      BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                      unsigned* __restrict__ counters, int M, int N, int K, int units,
                      int group_size, int units_per_split, int slabs) {
  using Cd = MmaCodec<F>;
  using St = Stage<F, 0>;
  constexpr int kW = Cd::kWords;
  constexpr int kU = St::kUnits;
  constexpr int kChunkK = chunk_k<MT>();
  constexpr int kUnitsPerChunk = kChunkK / kUnitK;
  static_assert(kUnitsPerChunk % kU == 0 && kUnitsAlign % kU == 0,
                "stages must not straddle an A chunk or a split");
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
  const int units_per_group = group_size / kUnitK;  // 1, 2, 4 or 8
  const int group_shift = __ffs(units_per_group) - 1;
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
    // A[0 : 16 MT, kc : kc + kChunkK) as f16 in mma k order (each 8-wide vector of a unit's
    // rows 8c..8c+7 scatters its four pairs to k = 16 step + 8 h + 2c), zeros past M, K and the
    // split's end. K and the split bounds are multiples of 32, so each vector is wholly in or
    // out. Rows past M stay zero from the first chunk on, so later chunks write only M rows.
    const int kc = kbeg + unit * kUnitK;
    constexpr int kVecPerRow = kChunkK / 8;
    const int rows = unit == 0 ? MT * 16 : min(M, MT * 16);
    for (int i = threadIdx.x; i < rows * kVecPerRow; i += kMmaThreads) {
      const int row = i / kVecPerRow, col = (i % kVecPerRow) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row < M && kc + col < kend)
        v = stage_as_f16<TA>(*reinterpret_cast<const uint4*>(A + static_cast<int64_t>(row) * K + kc + col));
      uint32_t* dst = reinterpret_cast<uint32_t*>(&a_s[row][(col & ~31) + 2 * ((col / 8) % 4)]);
      dst[0] = v.x;   // rows 8c + 0, 1: step 0, h 0
      dst[4] = v.y;   // rows 8c + 2, 3: step 0, h 1 (k + 8)
      dst[8] = v.z;   // rows 8c + 4, 5: step 1, h 0 (k + 16)
      dst[12] = v.w;  // rows 8c + 6, 7: step 1, h 1 (k + 24)
    }
    __syncthreads();
  };

  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][t][i] = 0.0f;

  const __half* a_lane = &a_s[lane % 16][(lane / 16) * 8];
  __half2 s2[8];  // the fp16 scales of the current group
#pragma unroll
  for (int t = 0; t < 8; ++t) s2[t] = __float2half2_rn(0.0f);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s);
  for (int s = 0; s < nstages; ++s) {
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
      uint32_t w[kW * 4];
#pragma unroll
      for (int j = 0; j < kW; ++j) {
        const uint4 v = slot[(a * kW + j) * 32 + lane];
        w[4 * j] = v.x;
        w[4 * j + 1] = v.y;
        w[4 * j + 2] = v.z;
        w[4 * j + 3] = v.w;
      }
      if ((unit & group_mask) == 0) {
        const __half* srow = srows + (static_cast<int>(unit >> group_shift) - stage_group) * kSlabN;
#pragma unroll
        for (int t = 0; t < 8; ++t)
          s2[t] = __float2half2_rn(__half2float(srow[t * 8 + lane / 4]) * Cd::kHalfScale);
      }
      const __half* a_unit = a_lane + ((s * kU + a) % kUnitsPerChunk) * kUnitK;
#pragma unroll
      for (int step = 0; step < 2; ++step) {
        uint32_t afrag[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(afrag[mt], a_unit + mt * 16 * (kChunkK + kRowPad) + step * 16);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const uint32_t b0 = b_register<F, true>(w, (step * 8 + t) * 2, s2[t]);
          const uint32_t b1 = b_register<F, true>(w, (step * 8 + t) * 2 + 1, s2[t]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_16816(acc[mt][t], afrag[mt], b0, b1);
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
  epilogue.template reduce_if_last<true>(col_begin, min(N, col_begin + kMmaWarps * kSlabN), MT * 16);
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
      const int64_t k = unit * kUnitK + unit_row_of_mma_k(step * 16 + 8 * h + 2 * (lane % 4));
      const int64_t n = slab * kSlabN + t * 8 + lane / 4;
      uint32_t codes[2] = {0, 0};
      if (n < N && k < K) {  // padding (past N or K) stays code 0
        for (int e = 0; e < 2; ++e)
          codes[e] = (packed[((k + e) / P) * N + n] >> (bits * ((k + e) % P))) & mask;
      }
      if constexpr (F == QuantFormat::fp4_e2m1) {
        for (int e = 0; e < 2; ++e)
          out |= ((codes[e] >> 3) << Cd::sign_bit(p) | (codes[e] & 7u) << Cd::mag_bit(p)) << (16 * e);
      } else if constexpr (F == QuantFormat::fp8_e4m3) {
        for (int e = 0; e < 2; ++e)
          out |= ((codes[e] >> 7) << (15 - p) | (codes[e] & 0x7fu) << (7 - 7 * p)) << (16 * e);
      } else {
        for (int e = 0; e < 2; ++e) out |= (codes[e] << Cd::field_bit(p)) << (16 * e);
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

// Launches unless the grid would leave most SMs idle (then the caller's dequantize + cuBLAS
// path is faster); returns whether it launched.
template <QuantFormat F, int MT, typename TA>
bool launch_mma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                cudaStream_t stream) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int slabs = slabs_for(N);
  const int blocks_x = (slabs + kMmaWarps - 1) / kMmaWarps;
  const int units = static_cast<int>(padded_units(K));
  const int sms = multiprocessor_count(device);
  // Asked once per kernel and process.
  static const int resident = resident_blocks_per_sm(reinterpret_cast<const void*>(&gemm_q_mma_kernel<F, MT, TA>),
                                                     kMmaThreads, smem_bytes<F, MT>());
  const auto [splits, units_per_split] = plan_tiled_splits(M, K, format_bits(F), units, resident * sms, blocks_x);
  if (blocks_x * splits < sms && !force_tiled_gemm) return false;
  SplitKBuffers buffers = split_k_buffers(device, splits, M, N, blocks_x);
  const uint32_t* stream_words = W.tiled.data<uint32_t>();
  gemm_q_mma_kernel<F, MT, TA><<<dim3(blocks_x, splits), kMmaThreads, smem_bytes<F, MT>(), stream>>>(
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
    if (M <= 32) launched = launch_mma<F, 2, TA>(A, W, bias, C, stream);
    else launched = launch_mma<F, 4, TA>(A, W, bias, C, stream);
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
void set_per_slab_gemm(bool on) { per_slab_gemm = on; }
bool tiled_gemm_forced() { return force_tiled_gemm; }

bool mma_supported(const QuantizedWeight& W, float max_abs_scale) {
  // M > 16 tiles multiply in fp16: FP4 and FP8 the scale times 2^14 or 2^8 by a code's value
  // times 2^-14 or 2^-8, INT2 the scale by c - 1.5. Every factor and product must stay finite:
  // the largest is the scale times 2^14 (FP4), times 448 (FP8's largest value: the product
  // outgrows the factor 2^8 s) or times 1.5 (INT2).
  // Group sizes are powers of two from 32 to 256, so groups are whole units.
  const float bias = W.format == QuantFormat::fp4_e2m1 ? 16384.0f : W.format == QuantFormat::fp8_e4m3 ? 448.0f : 1.5f;
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
  if (!W.tiled.defined()) return false;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  if (!per_slab_gemm && gemm_q_wgmma(A, W, bias, C, stream)) return true;
  if (A.size(0) > kMaxMmaM) return false;
  if (A.size(0) <= 16) {
    gemm_q_stream(A, W, bias, C, stream);
    return true;
  }
  if (!per_slab_gemm) {
    const BatchLaunch batch = gemm_q_batch(A, W, bias, C, stream);
    if (batch != BatchLaunch::long_splits) return batch == BatchLaunch::launched;
  }
  switch (W.format) {
    case QuantFormat::fp4_e2m1: return dispatch_mma<QuantFormat::fp4_e2m1>(A, W, bias, C, stream);
    case QuantFormat::fp8_e4m3: return dispatch_mma<QuantFormat::fp8_e4m3>(A, W, bias, C, stream);
    case QuantFormat::int2: return dispatch_mma<QuantFormat::int2>(A, W, bias, C, stream);
  }
  return false;
}

void append_gemm_mma_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_mma_fp4_m32", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp4_e2m1, 2, __half>)});
  out.push_back({"gemm_mma_fp8_m32", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp8_e4m3, 2, __half>)});
  out.push_back({"gemm_mma_int2_m32", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::int2, 2, __half>)});
  out.push_back({"repack_tiled_fp4", reinterpret_cast<const void*>(&repack_tiled_kernel<QuantFormat::fp4_e2m1>)});
}

}  // namespace marlin::cuda
