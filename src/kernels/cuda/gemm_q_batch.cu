// Tensor-core quantized GEMM for 16 < M <= 64 (batched decode, short prompts) over the tile
// layout of gemm_q_mma.cu, and for 13 <= M <= 16 where the stream kernel would cut a slab
// into many parts (gemm_q_stream.cu). Long K splits at M <= 32 stay on gemm_q_mma.cu's
// per-slab kernel, which measured faster there (launch_batch).
//
// A block of 8 warps covers 4 slabs (256 columns) and one K split. Each warp takes half a slab
// (4 of its 8-column tiles) for all of A's rows: 64 accumulators a lane at M = 64, so an SM
// keeps 16 warps resident. (A warp a whole slab held 128, and 8 warps an SM issued in 18% of
// cycles at M = 64 on an H200, mostly waiting.) The slab's two warps copy its stream with
// 16-byte cp.async into a ring they share, half the words each, and meet at a 64-thread
// barrier a stage; each reads whole 16-byte words and keeps its tiles' components. (Private
// rings of 8-byte copies, each warp its tiles' bytes, measured within a few percent of this
// and need more shared memory.) The block copies A's rows chunk by chunk with cp.async into shared buffers, in the same
// commit groups as the weights, a few stages ahead, so no warp waits on a synchronous load of
// A. bf16 rows are converted to f16 in place by the thread that copied them. One block barrier
// a chunk; split-K partials are summed by the last block of each column range.
#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/split_k.cuh"

namespace marlin::cuda {
namespace {

using namespace tile;

constexpr int kBatchWarps = 8;
constexpr int kBatchThreads = kBatchWarps * 32;
// Halves of padding per A row: a row stride of 16 words mod 32, so the 8 lanes of a quarter
// warp (two rows, four 16-byte columns each) read distinct banks.
constexpr int kAPad = 32;

constexpr int kSlabsPerBlock = kBatchWarps / 2;
constexpr int kTiles = 4;  // 8-column tiles a warp: half a slab
constexpr int kLongSplitK = 2048;  // see launch_batch

template <QuantFormat F, int MT>
struct BatchShape {
  static constexpr int kW = MmaCodec<F>::kWords;
  static constexpr int kU = Stage<F, 0>::kUnits;
  static constexpr int kWeightWords = Stage<F, 0>::kWeightWords;  // uint4 a stage (4 a lane)
  static constexpr int kStageBytes = Stage<F, 0>::kBytes;
  // Ring stages a slab: one being computed, the rest in flight. INT2's stages are 4 units
  // (128 k), so at M = 64 a ring of 4 needs 4 A chunks of 128 k: 131 KB, one block an SM.
  static constexpr int kRingStages = F == QuantFormat::int2 && MT == 4 ? 3 : 4;
  static constexpr int kChunkK = MT == 4 ? 128 : MT == 2 ? 256 : 512;
  static constexpr int kStagesPerChunk = kChunkK / kUnitK / kU;
  // The chunk being computed plus those the ring's lead may already be copying.
  static constexpr int kABuffers = 1 + (kRingStages - 2 + kStagesPerChunk) / kStagesPerChunk;
  static constexpr int kRows = MT * 16;
  static constexpr int kRowHalves = kChunkK + kAPad;
  static constexpr int kABytes = kRows * kRowHalves * 2;
  static constexpr int kPiecesPerThread = kRows * kChunkK / 8 / kBatchThreads;  // 16-byte copies
  static constexpr int kSmemBytes = kABuffers * kABytes + kSlabsPerBlock * kRingStages * kStageBytes;
  static_assert(kStagesPerChunk >= 1 && kRows * kChunkK / 8 % kBatchThreads == 0, "whole stages and copies a chunk");
};

// This warp's words of one unit (kW x 32 lanes x 16 bytes in smem) for tile half `half`: a
// lane's u32 i of a unit (word i / 4, component i % 4) holds pairs of step i / (2 kW) and tiles
// of half (i / kW) % 2 in every format, so a half's words are i = half kW + 2 kW r + [0, kW)
// for steps r = 0, 1. In that order they are the words of a 4-tile slab (b_register's index
// (4 step + tile) 2 + h). Whole 16-byte reads (conflict-free), then the half's components.
template <int kW>
__device__ __forceinline__ void load_half_words(const uint4* unit, int lane, int half, uint32_t (&w)[2 * kW]) {
  if constexpr (kW == 4) {  // FP8: words half and half + 2
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4 v = unit[(half + 2 * r) * 32 + lane];
      w[4 * r] = v.x, w[4 * r + 1] = v.y, w[4 * r + 2] = v.z, w[4 * r + 3] = v.w;
    }
  } else if constexpr (kW == 2) {  // FP4: components 2 half, 2 half + 1 of words 0 and 1
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4 v = unit[r * 32 + lane];
      w[2 * r] = half ? v.z : v.x;
      w[2 * r + 1] = half ? v.w : v.y;
    }
  } else {  // INT2: components half and half + 2 of word 0
    const uint4 v = unit[lane];
    w[0] = half ? v.y : v.x;
    w[1] = half ? v.w : v.z;
  }
}

__device__ __forceinline__ void pair_barrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id)); }

template <QuantFormat F, int MT, typename TA>
__global__ void __launch_bounds__(kBatchThreads, 2)
    gemm_q_batch_kernel(const TA* __restrict__ A, const uint4* __restrict__ weights,
                        const uint4* __restrict__ scale_stream, const void* __restrict__ bias,
                        BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                        unsigned* __restrict__ counters, int M, int N, int K, int units,
                        int group_size, int units_per_split, int slabs) {
  using S = BatchShape<F, MT>;
  constexpr int kW = S::kW, kU = S::kU, kSpc = S::kStagesPerChunk, T = kTiles, kRingStages = S::kRingStages;
  extern __shared__ __align__(16) unsigned char smem[];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int half = warp & 1;
  const int slab = blockIdx.x * kSlabsPerBlock + warp / 2;
  const bool active = slab < slabs;
  unsigned char* ring = smem + S::kABuffers * S::kABytes + (warp / 2) * kRingStages * S::kStageBytes;
  const int unit0 = blockIdx.y * units_per_split;
  const int nstages = min(units_per_split, units - unit0) / kU;  // whole: both are multiples of 8
  const int kbeg = unit0 * kUnitK;
  const int kend = min(K, kbeg + nstages * kU * kUnitK);
  const int units_per_group = group_size / kUnitK;  // 1, 2, 4 or 8
  const int group_shift = __ffs(units_per_group) - 1;
  const unsigned group_mask = static_cast<unsigned>(units_per_group) - 1u;
  const int rows_per_stage = max(1, kU >> group_shift);
  const int groups = units >> group_shift;
  const uint4* w_src = weights + (static_cast<int64_t>(slab) * units + unit0) * kW * 32 + lane;
  const uint4* s_src = scale_stream + (static_cast<int64_t>(slab) * groups + (unit0 >> group_shift)) *
                                          (kScaleRowBytes / 16);

  // A chunk ch: rows [0, 16 MT) and k [kbeg + ch kChunkK, + kChunkK) in natural order, zeros past
  // M, K and the split (K and the splits are multiples of 32: each 16-byte piece is wholly in).
  auto a_chunk = [&](int ch) { return smem + (ch % S::kABuffers) * S::kABytes; };
  auto a_piece = [&](int j, int& row, int& col) {
    const int i = threadIdx.x + j * kBatchThreads;
    row = i / (S::kChunkK / 8);
    col = (i % (S::kChunkK / 8)) * 8;
  };
  auto issue_a = [&](int ch) {
    unsigned char* buf = a_chunk(ch);
    const int kc = kbeg + ch * S::kChunkK;
#pragma unroll
    for (int j = 0; j < S::kPiecesPerThread; ++j) {
      int row, col;
      a_piece(j, row, col);
      const bool in = row < M && kc + col < kend;
      cp_async16_or_zero(buf + (row * S::kRowHalves + col) * 2, A + (in ? static_cast<int64_t>(row) * K + kc + col : 0), in);
    }
  };
  // bf16 rows as f16 times 2^-4 (the mma's operand), by the thread that copied them.
  auto convert_a = [&](int ch) {
    if constexpr (!std::is_same_v<TA, __half>) {
      unsigned char* buf = a_chunk(ch);
#pragma unroll
      for (int j = 0; j < S::kPiecesPerThread; ++j) {
        int row, col;
        a_piece(j, row, col);
        uint4* p = reinterpret_cast<uint4*>(buf + (row * S::kRowHalves + col) * 2);
        *p = stage_as_f16<TA>(*p);
      }
    }
  };
  // Stage s: half of the slab's weight words (the other warp copies the other half) and the
  // scale rows (warp half 0), and A's chunk where s starts one. Always commits a group, so the
  // wait counts stay uniform at the tail.
  const uint64_t policy = weight_l2_policy();
  auto issue = [&](int s) {
    if (s < nstages) {
      if (active) {
        uint4* dst = reinterpret_cast<uint4*>(ring + (s % kRingStages) * S::kStageBytes);
        const uint4* src = w_src + static_cast<int64_t>(s) * S::kWeightWords;
#pragma unroll
        for (int i = half; i < 4; i += 2) cp_async16_policy(dst + i * 32 + lane, src + i * 32, policy);
        if (half == 0 && lane < rows_per_stage * (kScaleRowBytes / 16))
          cp_async16_policy(dst + S::kWeightWords + lane,
                            s_src + ((s * kU) >> group_shift) * (kScaleRowBytes / 16) + lane, policy);
      }
      if (s % kSpc == 0) issue_a(s / kSpc);
    }
    cp_async_commit();
  };

  float acc[MT][T][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][t][i] = 0.0f;
  __half2 s2[T];  // the fp16 scales of the current group, this lane's column of each tile
#pragma unroll
  for (int t = 0; t < T; ++t) s2[t] = __float2half2_rn(0.0f);
  const int a_row = lane / 4, c = lane % 4;

#pragma unroll
  for (int s = 0; s < kRingStages - 1; ++s) issue(s);
  for (int s = 0; s < nstages; ++s) {
    cp_async_wait<kRingStages - 2>();  // this thread's copies of stage s (and of its A chunk)
    if (s % kSpc == 0) {
      convert_a(s / kSpc);
      // Every thread's part of the chunk; every warp done with the chunk whose buffer the
      // copies issued below may reuse.
      __syncthreads();
    } else {
      // The other warp's words and the scale rows; the slot both computed last is free again.
      pair_barrier(1 + warp / 2);
    }
    issue(s + kRingStages - 1);
    if (!active) continue;
    const unsigned char* slot = ring + (s % kRingStages) * S::kStageBytes;
    const __half* srows = reinterpret_cast<const __half*>(slot) + S::kWeightWords * 8;
    const unsigned char* a_buf = a_chunk(s / kSpc);
    const int stage_group = (unit0 + s * kU) >> group_shift;
#pragma unroll
    for (int a = 0; a < kU; ++a) {
      const unsigned unit = static_cast<unsigned>(unit0 + s * kU + a);
      uint32_t w[2 * kW];
      load_half_words<kW>(reinterpret_cast<const uint4*>(slot) + a * kW * 32, lane, half, w);
      if ((unit & group_mask) == 0) {
        const __half* srow = srows + (static_cast<int>(unit >> group_shift) - stage_group) * kSlabN;
#pragma unroll
        for (int t = 0; t < T; ++t)
          s2[t] = __float2half2_rn(__half2float(srow[(half * T + t) * 8 + a_row]) * MmaCodec<F>::kHalfScale);
      }
      // Rows a_row and a_row + 8 of each row tile, k 8c..8c+7 of the unit: both steps' A
      // fragments (the layout's k order), two 16-byte reads a row tile. (8-byte reads a step
      // would keep fewer registers live, but 16 lanes' reads then fall on 2-way bank conflicts.)
      const unsigned char* a_lo = a_buf + (a_row * S::kRowHalves + ((s % kSpc) * kU + a) * kUnitK + 8 * c) * 2;
      uint4 lo[MT], hi[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        lo[mt] = *reinterpret_cast<const uint4*>(a_lo + mt * 16 * S::kRowHalves * 2);
        hi[mt] = *reinterpret_cast<const uint4*>(a_lo + (mt * 16 + 8) * S::kRowHalves * 2);
      }
#pragma unroll
      for (int step = 0; step < 2; ++step)
#pragma unroll
        for (int t = 0; t < T; ++t) {
          const uint32_t b0 = b_register<F, true>(w, (step * T + t) * 2, s2[t]);
          const uint32_t b1 = b_register<F, true>(w, (step * T + t) * 2 + 1, s2[t]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t afrag[4] = {step ? lo[mt].z : lo[mt].x, step ? hi[mt].z : hi[mt].x,
                                       step ? lo[mt].w : lo[mt].y, step ? hi[mt].w : hi[mt].y};
            mma_16816(acc[mt][t], afrag, b0, b1);
          }
        }
    }
  }
  cp_async_wait<0>();

  // Fragment (mt, t, i) is C[16 mt + L/4 + 8 (i / 2)][64 slab + 8 (T half + t) + 2 (L % 4) + i % 2].
  SplitKEpilogue<TA> epilogue{C, partials, counters, bias, bias_kind, M, N};
  constexpr float kUnscale = std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
  const bool split = gridDim.y > 1;
  if (active) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int t = 0; t < T; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = mt * 16 + a_row + 8 * (i / 2);
          const int col = slab * kSlabN + (half * T + t) * 8 + 2 * c + (i % 2);
          epilogue.store(row, col, acc[mt][t][i] * kUnscale, split);
        }
  }
  if (!split) return;
  const int col_begin = blockIdx.x * kSlabsPerBlock * kSlabN;
  epilogue.template reduce_if_last<true>(col_begin, min(N, col_begin + kSlabsPerBlock * kSlabN), MT * 16);
}

template <QuantFormat F, int MT, typename TA>
BatchLaunch launch_batch(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                         cudaStream_t stream) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int slabs = slabs_for(N);
  const int blocks_x = (slabs + kSlabsPerBlock - 1) / kSlabsPerBlock;
  const int units = static_cast<int>(padded_units(K));
  const int sms = multiprocessor_count(device);
  // Asked once per kernel and process.
  static const int resident = resident_blocks_per_sm(reinterpret_cast<const void*>(&gemm_q_batch_kernel<F, MT, TA>),
                                                     kBatchThreads, BatchShape<F, MT>::kSmemBytes);
  const auto [splits, units_per_split] = plan_tiled_splits(M, K, format_bits(F), units, resident * sms, blocks_x);
  // Fewer blocks than SMs still beat dequantize + cuBLAS at M <= 32 down to half the SMs (H200,
  // FP4 4096x4096 M = 17: 15.3 against 23.5 us; 8192x2048: 17.2 against 24.0), not at M > 32
  // (FP8 3072x3072 M = 64: 28.6 against 18.2).
  constexpr int kMinFillDivisor = MT <= 2 ? 2 : 1;
  if (blocks_x * splits * kMinFillDivisor < sms && !tiled_gemm_forced()) return BatchLaunch::grid_too_small;
  // Long splits at M <= 32: the per-slab kernel measured faster (H200, 8192x28672, K 4096 a
  // split: 84.7 against 110.5 us at M = 17, 105.7 against 114.8 at M = 32; at K 1024 or less a
  // split this kernel was 9-29% faster).
  if (MT <= 2 && K / splits >= kLongSplitK && !tiled_gemm_forced()) return BatchLaunch::long_splits;
  SplitKBuffers buffers = split_k_buffers(device, splits, M, N, blocks_x);
  const uint32_t* stream_words = W.tiled.data<uint32_t>();
  gemm_q_batch_kernel<F, MT, TA><<<dim3(blocks_x, splits), kBatchThreads, BatchShape<F, MT>::kSmemBytes, stream>>>(
      static_cast<const TA*>(A.data_ptr()), reinterpret_cast<const uint4*>(stream_words),
      reinterpret_cast<const uint4*>(stream_words + weight_words<F>(K, N)),
      bias.defined() ? bias.data_ptr() : nullptr, bias_kind(bias.dtype(), bias.defined()),
      static_cast<TA*>(C.data_ptr()), buffers.partials, buffers.counters, M, N, K, units,
      W.group_size, units_per_split, slabs);
  MARLIN_CUDA_CHECK_LAUNCH("gemm_q");
  return BatchLaunch::launched;
}

template <QuantFormat F>
BatchLaunch dispatch_batch(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                           cudaStream_t stream) {
  BatchLaunch launched = BatchLaunch::grid_too_small;
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
    if (A.size(0) <= 16) launched = launch_batch<F, 1, TA>(A, W, bias, C, stream);
    else if (A.size(0) <= 32) launched = launch_batch<F, 2, TA>(A, W, bias, C, stream);
    else launched = launch_batch<F, 4, TA>(A, W, bias, C, stream);
  });
  return launched;
}

}  // namespace

BatchLaunch gemm_q_batch(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                         cudaStream_t stream) {
  switch (W.format) {
    case QuantFormat::fp4_e2m1: return dispatch_batch<QuantFormat::fp4_e2m1>(A, W, bias, C, stream);
    case QuantFormat::fp8_e4m3: return dispatch_batch<QuantFormat::fp8_e4m3>(A, W, bias, C, stream);
    case QuantFormat::int2: return dispatch_batch<QuantFormat::int2>(A, W, bias, C, stream);
  }
  return BatchLaunch::grid_too_small;
}

void append_gemm_batch_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_batch_fp4_m32", reinterpret_cast<const void*>(&gemm_q_batch_kernel<QuantFormat::fp4_e2m1, 2, __half>)});
  out.push_back({"gemm_batch_fp8_m32", reinterpret_cast<const void*>(&gemm_q_batch_kernel<QuantFormat::fp8_e4m3, 2, __half>)});
  out.push_back({"gemm_batch_int2_m32", reinterpret_cast<const void*>(&gemm_q_batch_kernel<QuantFormat::int2, 2, __half>)});
}

}  // namespace marlin::cuda
