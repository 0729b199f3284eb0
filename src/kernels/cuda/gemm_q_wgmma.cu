// Tensor-core quantized GEMM for a few rows (batched decode, short prompts) on Hopper's
// warpgroup MMA (wgmma, sm_90a), over the tile layout of gemm_q_mma.cu.
//
// C^T = W^T A^T: the weight is the wgmma's first operand, decoded from the tile layout into
// registers, and A's rows are its second, staged in shared memory. wgmma's M of 64 is then the
// weight's columns and its N (8 to 256 in steps of 8) is A's rows, so 64 columns of a batch
// of up to 64 rows are one instruction a k16 step, where mma.sync takes one per 16 rows and 8
// columns (gemm_q_batch.cu).
// The instruction runs asynchronously: a warp decodes the next step's weights while the
// tensor cores multiply the last.
//
// A block is two warpgroups: 8 warps over 4 slabs (256 columns), one K split. Each warp takes
// half a slab (tiles 4 h..4 h + 3): a wgmma's 64 rows are 16 columns of each of its group's
// warps, so a warp multiplies its half in 2 rounds (tiles 2 r and 2 r + 1 of the half) with 2
// accumulator sets. Lane L's words of a unit hold its pairs of every tile, which are exactly its
// A-operand registers (the mma.m16n8k16 B fragment of tile t is the wgmma A fragment's rows
// 8 (t % 2)..: a pair (t, hh) is register 2 hh + t % 2 of its round). Each warp loads its half
// of them (FP8 whole words, FP4 and INT2 the half of each word; the other half's warp, in step
// through the wgmmas, reads the rest of those sectors) straight from global memory into a
// register ring of 2 KB (4 KB at 64 rows); no shared memory, no barrier for weights. A slot's
// next unit is loaded after its words are decoded. (Whole-slab warps with 4 rounds kept 228
// registers, 8 warps an SM, and ran 6-36% slower; rings of cp.async copies in shared memory,
// slower for FP4 and INT2; an L2 prefetch of the units past the ring, no faster:
// docs/PERFORMANCE.md.)
// A's rows go through shared memory in chunks of 256 k, in the wgmma layout (core matrices of
// 8 rows x 16 bytes, in the tile layout's k order: a unit's mma k index j stands for its row
// unit_row_of_mma_k(j)), bf16 converted to f16 times 2^-4. Where a block's K split is 4 chunks
// or more, a layout kernel writes that layout once a launch and the blocks copy it as it is;
// else each block copies A's rows into a staging buffer and lays them out itself. A chunk's
// scale rows of the block's slabs come with it. Three chunk buffers rotate, one block barrier a
// chunk. Rows: 16, 32 or 64 a launch (wgmma N 16, 32, 64); at 64 the accumulators leave one
// block an SM. Above 64 rows, tiles of 96 or 128 rows (wgmma N 96 or 128, blockIdx.z the tile;
// the layout kernel always), where a decoded weight serves that many rows. K splits are summed
// by the last block of each column range (split_k.cuh). The kernels are programmatic
// dependents (pdl.cuh): the first weights load before the wait.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/gemm_q_wgmma.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/split_k.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace marlin::cuda {
namespace {

using namespace tile;

constexpr int kWarps = 8;                       // two warpgroups
constexpr int kThreads = kWarps * 32;
constexpr int kSlabsPerBlock = kWarps / 2;      // a warp per half slab
[[maybe_unused]] constexpr int kRounds = 2;     // 16-column rounds a half slab
constexpr int kChunkUnits = kUnitsAlign;        // splits are whole chunks
constexpr int kChunkK = kChunkUnits * kUnitK;   // 256
constexpr int kCoreBytes = 128;                 // a core matrix: 8 rows x 8 f16

// The wide variants: tiles of 96 or 128 rows (wgmma N 96, 128), as many as M needs (large batches).
template <int NB>
constexpr bool kWide = NB > 8;

template <QuantFormat F, int NB>  // NB: A's rows a tile covers, in 8-row groups (the wgmma's N / 8)
struct WgShape {
  static constexpr int kW = MmaCodec<F>::kWords;
  static constexpr int kRows = 8 * NB;
  // One k16 step: NB core matrices for k 0-7, then NB for k 8-15 (the descriptor's leading
  // byte offset NB x 128, its stride byte offset 128).
  static constexpr int kStepBytes = 2 * NB * kCoreBytes;
  static constexpr int kChunkBytes = kChunkUnits * 2 * kStepBytes;
  static constexpr int kPiecesPerThread = kRows * kChunkK / 8 / kThreads;  // 16-byte pieces of A
  // A chunk's scale rows: a row per group (at most a unit each) of each of the block's slabs.
  static constexpr int kScaleBytes = kSlabsPerBlock * kChunkUnits * kScaleRowBytes;
  // Three chunks of A (in the wgmma layout) and of scale rows, and a staging buffer where the
  // kernel lays out A itself (kLaidOut false): see the kernel.
  static constexpr int kBuffers = 3;
  static constexpr int kSmemBytes(bool laid_out) {
    return kBuffers * (kChunkBytes + kScaleBytes) + (laid_out ? 0 : kChunkBytes);
  }
  // Units in flight a warp: 2 KB of weights (FP4 4 units, FP8 2, INT2 8), 32 KB an SM at two
  // blocks (twice that measured slower: the ring's registers cost a block an SM); 4 KB from 64
  // rows, where one block an SM has the registers (128-row tiles, H200: 8192x28672 FP8 at
  // M = 128 122.9 us against 159.7 with 2 KB). An L2 prefetch of the units past the ring was
  // slower there too (FP4 M = 1024 1154.1 against 1043.1 us).
  static constexpr int kPrefetch = std::min(kChunkUnits, (NB >= 8 ? 16 : 8) / kW);
  static_assert(kChunkUnits % kPrefetch == 0 && kPiecesPerThread >= 1, "whole rings a chunk");
  static_assert(kSlabsPerBlock * kChunkUnits * kScaleRowBytes / 16 <= kThreads, "a scale piece a thread");
};

// A's rows in the kernel's shared-memory layout, every chunk of K, written once a launch into
// global memory (L2 holds it: 64 rows x 8192 k are 1 MB), so that each block copies a chunk as
// it is. Converted inside the GEMM, every block converted the same chunks again (112 blocks on
// 8192x28672), a fifth to a quarter of the kernel's time at 32-64 rows (Nsight Compute).
// Piece i (16 bytes: 8 k of one row) of chunk c is row i / 32, k 8 (i % 32) of the chunk; its
// word w (unit rows 8 q + 2 w, + 1) is mma k index 16 (w / 2) + 8 (w % 2) + 2 q of its unit:
// step 2 u + w / 2, k half w % 2, bytes 4 q of its row (a core matrix of 8 rows x 16 bytes;
// a unit's mma k index j stands for its row unit_row_of_mma_k(j)). bf16 becomes f16 times 2^-4.
// Wide launches (more rows than one tile) take the row tiles one after another: chunk c of tile
// t is chunk t x chunks + c.
template <int NB>
__device__ __forceinline__ int a_word_offset(int row, int col, int w) {
  using S = WgShape<QuantFormat::fp4_e2m1, NB>;  // the layout does not depend on the format
  const int u = col / kUnitK, q = (col % kUnitK) / 8;
  return 2 * u * S::kStepBytes + (row / 8) * kCoreBytes + (row % 8) * 16 + 4 * q + (w / 2) * S::kStepBytes +
         (w % 2) * NB * kCoreBytes;
}

template <int NB, typename TA>
__global__ void __launch_bounds__(256) wgmma_layout_a_kernel(const TA* __restrict__ A, uint32_t* __restrict__ out,
                                                            int M, int K, int chunks, int pieces) {
  using S = WgShape<QuantFormat::fp4_e2m1, NB>;  // the layout does not depend on the format
  pdl_wait();  // launched as a programmatic dependent: A is the previous kernel's output
  pdl_launch_dependents();  // the GEMM may load its first weights meanwhile
  const int i = blockIdx.x * 256 + threadIdx.x;
  if (i >= pieces) return;
  constexpr int kPiecesPerChunk = S::kRows * kChunkK / 8;
  const int chunk = i / kPiecesPerChunk, p = i % kPiecesPerChunk;
  const int row = (chunk / chunks) * S::kRows + p / 32, col = 8 * (p % 32);
  const int k = (chunk % chunks) * kChunkK + col;
  uint4 v = make_uint4(0, 0, 0, 0);
  if (row < M && k < K) v = activations_as_f16<TA>(*reinterpret_cast<const uint4*>(A + static_cast<int64_t>(row) * K + k));
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  uint32_t* dst = out + static_cast<int64_t>(chunk) * (S::kChunkBytes / 4);
#pragma unroll
  for (int w = 0; w < 4; ++w) dst[a_word_offset<NB>(row % S::kRows, col, w) / 4] = words[w];
}

// Unit u's words for this warp's half of its slab (tiles 4 h..4 h + 3), as the pairs a 4-tile
// slab would hold (b_register's index (4 step + tile) 2 + h): FP8 the whole words h and h + 2,
// FP4 the 8 bytes 8 h.. of words 0 and 1, INT2 the 4 bytes 4 h.. and 8 + 4 h.. of word 0 (the
// other half's warp, in the same warpgroup and so in step, reads the rest of those sectors).
template <QuantFormat F>
__device__ __forceinline__ void load_half_unit(const uint4* unit, int half, uint32_t (&w)[2 * MmaCodec<F>::kWords],
                                               uint64_t policy) {
  if constexpr (F == QuantFormat::fp8_e4m3) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4 v = ldg_nc_policy(unit + (half + 2 * r) * 32, policy);
      w[4 * r] = v.x, w[4 * r + 1] = v.y, w[4 * r + 2] = v.z, w[4 * r + 3] = v.w;
    }
  } else if constexpr (F == QuantFormat::fp4_e2m1) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const char* p = reinterpret_cast<const char*>(unit + r * 32) + 8 * half;
      asm volatile("ld.global.nc.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;"
                   : "=r"(w[2 * r]), "=r"(w[2 * r + 1]) : "l"(p), "l"(policy));
    }
  } else {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const char* p = reinterpret_cast<const char*>(unit) + 4 * half + 8 * r;
      asm volatile("ld.global.nc.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(w[r]) : "l"(p), "l"(policy));
    }
  }
}

// Two blocks an SM up to 32 rows; at 64, the accumulators take a block's worth of registers.
// kLaidOut: A comes laid out by wgmma_layout_a_kernel (a_layout); else the kernel reads A's rows
// and lays them out itself (where a block's K split is short, the extra launch cost more than
// it saved).
template <QuantFormat F, int NB, typename TA, bool kLaidOut>
__global__ void __launch_bounds__(kThreads, NB <= 4 ? 2 : 1)
    gemm_q_wgmma_kernel(const TA* __restrict__ A, const uint4* __restrict__ a_layout, const uint4* __restrict__ weights,
                        const unsigned short* __restrict__ scale_stream, const void* __restrict__ bias,
                        BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                        unsigned* __restrict__ counters, int M, int N, int K, int units, int group_size,
                        int units_per_split, int slabs) {
#if defined(MARLIN_HAS_WGMMA)
  using S = WgShape<F, NB>;
  constexpr int kW = S::kW, P = S::kPrefetch;
  extern __shared__ __align__(128) unsigned char smem[];
  // Scale rows of chunk ch: buffer ch % 3, [slab of the block][group of the chunk][column].
  unsigned short* scale_rows = reinterpret_cast<unsigned short*>(smem + S::kBuffers * S::kChunkBytes);
  unsigned char* staging = smem + S::kBuffers * (S::kChunkBytes + S::kScaleBytes);
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int half = warp % 2;
  const int slab = blockIdx.x * kSlabsPerBlock + warp / 2;
  const bool active = slab < slabs;
  const int unit0 = blockIdx.y * units_per_split;
  // The row tile (wide launches only: the decode-size variants keep one tile, and their code).
  const int row0 = kWide<NB> ? static_cast<int>(blockIdx.z) * S::kRows : 0;
  const int nunits = min(units_per_split, units - unit0);  // a multiple of 8: both are
  const int nchunks = nunits / kChunkUnits;
  const int units_per_group = group_size / kUnitK;  // 1, 2, 4 or 8
  const int group_shift = __ffs(units_per_group) - 1;
  const unsigned group_mask = static_cast<unsigned>(units_per_group) - 1u;
  const int groups = units >> group_shift;
  // A warp past the last slab reads slab 0 (its sums are never stored): every warp of the
  // group must issue each wgmma.
  const int wslab = active ? slab : 0;
  const uint4* w_src = weights + (static_cast<int64_t>(wslab) * units + unit0) * kW * 32 + lane;
  const int groups_per_chunk = kChunkUnits >> group_shift;
  const int kbeg = unit0 * kUnitK;
  const int kend = min(K, kbeg + nunits * kUnitK);
  const uint64_t policy = weight_l2_policy();

  // Laid out by the kernel, A's pieces: piece i = threadIdx.x + kThreads j is row 8 (i / 32 / 8)
  // + (i % 32) / 4, unit (i / 32) % 8, k quarter i % 4 of the chunk. A warp's 32 pieces then
  // fall on the 32 banks in the layout buffer (the bank of a 4-byte store depends on the row % 8
  // and the quarter only); the staging buffer is piece-major, and a thread lays out the pieces
  // it staged itself.
  auto piece = [&](int j, int& row, int& col) {
    const int i = threadIdx.x + j * kThreads, rest = i / 32;
    row = 8 * (rest / kChunkUnits) + (i % 32) / 4;
    col = (rest % kChunkUnits) * kUnitK + 8 * (i % 4);
  };
  // Chunk ch's rows of A (laid out, into buffer ch % 3; else into the staging buffer) and its
  // scale rows (into buffer ch % 3), one commit group. The scale rows are read from shared
  // memory where a group starts: loaded with the weights into the warp's registers, their wait
  // came a unit later, when the two halves of a register were joined (Nsight Compute: 16% of a
  // warp's stalls at 32 rows).
  auto issue_a = [&](int ch) {
    const int b = ch % S::kBuffers;
    if constexpr (kLaidOut) {
      const int64_t tile_chunk = (kWide<NB> ? static_cast<int64_t>(blockIdx.z) * (units / kChunkUnits) : 0) +
                                 unit0 / kChunkUnits + ch;
      const uint4* src = a_layout + tile_chunk * (S::kChunkBytes / 16);
#pragma unroll
      for (int j = 0; j < S::kPiecesPerThread; ++j)
        cp_async16(smem + b * S::kChunkBytes + (threadIdx.x + j * kThreads) * 16, src + threadIdx.x + j * kThreads);
    } else {
      const int kc = kbeg + ch * kChunkK;
#pragma unroll
      for (int j = 0; j < S::kPiecesPerThread; ++j) {
        int row, col;
        piece(j, row, col);
        const bool in = row0 + row < M && kc + col < kend;
        cp_async16_or_zero(staging + (threadIdx.x + j * kThreads) * 16,
                           A + (in ? static_cast<int64_t>(row0 + row) * K + kc + col : 0), in);
      }
    }
    constexpr int kPiecesPerRow = kScaleRowBytes / 16;
    const int pieces_per_slab = groups_per_chunk * kPiecesPerRow;
    if (threadIdx.x < kSlabsPerBlock * pieces_per_slab) {
      const int s = threadIdx.x / pieces_per_slab, rest = threadIdx.x % pieces_per_slab;
      const int src_slab = blockIdx.x * kSlabsPerBlock + s;
      const int group = ((unit0 + ch * kChunkUnits) >> group_shift) + rest / kPiecesPerRow;
      const bool in = src_slab < slabs;
      const unsigned short* row =
          scale_stream + (static_cast<int64_t>(in ? src_slab : 0) * groups + group) * kSlabN + 8 * (rest % kPiecesPerRow);
      cp_async16_or_zero(scale_rows + b * (S::kScaleBytes / 2) +
                             (s * kChunkUnits + rest / kPiecesPerRow) * kSlabN + 8 * (rest % kPiecesPerRow),
                         row, in);
    }
    cp_async_commit();
  };
  // The staged chunk ch into buffer ch % 3. All of a thread's pieces are read before the first
  // is written: the compiler cannot tell the staging buffer from the layout buffer, and kept
  // each read behind the write before it.
  auto lay_out_a = [&](int ch) {
    unsigned char* buf = smem + (ch % S::kBuffers) * S::kChunkBytes;
    uint4 staged[S::kPiecesPerThread];
#pragma unroll
    for (int j = 0; j < S::kPiecesPerThread; ++j)
      staged[j] = *reinterpret_cast<const uint4*>(staging + (threadIdx.x + j * kThreads) * 16);
#pragma unroll
    for (int j = 0; j < S::kPiecesPerThread; ++j) {
      int row, col;
      piece(j, row, col);
      const uint4 v = activations_as_f16<TA>(staged[j]);
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) *reinterpret_cast<uint32_t*>(buf + a_word_offset<NB>(row, col, w)) = words[w];
    }
  };

  // The ring: unit u's words of this half.
  uint32_t ring[P][2 * kW];
  auto load_unit = [&](int u, uint32_t (&dst)[2 * kW]) {
    load_half_unit<F>(w_src + static_cast<int64_t>(u) * kW * 32, half, dst, policy);
  };

  float acc[kRounds][4 * NB];
#pragma unroll
  for (int r = 0; r < kRounds; ++r)
#pragma unroll
    for (int i = 0; i < 4 * NB; ++i) acc[r][i] = 0.0f;
  __half2 s2[4];  // the current group's scales (times the codec's factor), tile 4 half + t's column g
#pragma unroll
  for (int t = 0; t < 4; ++t) s2[t] = __float2half2_rn(0.0f);
#pragma unroll
  for (int r = 0; r < kRounds; ++r) fence_accumulators(acc[r]);

#pragma unroll
  for (int i = 0; i < P; ++i) load_unit(i, ring[i]);
  pdl_wait();  // a programmatic dependent (of the layout kernel): the weights above, then A
  issue_a(0);
  if constexpr (kLaidOut) {
    if (nchunks > 1) {
      issue_a(1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
  } else {
    cp_async_wait<0>();
    lay_out_a(0);
  }
  fence_proxy_async();  // the copies or stores, visible to wgmma's reads
  __syncthreads();
  if constexpr (!kLaidOut) {
    if (nchunks > 1) issue_a(1);
  }

  // This thread's scale columns in a chunk's rows (tile 4 half + t's column g: column 32 half +
  // 8 t + g of its slab's row), and the chunk's first wgmma descriptor (a step's is that plus
  // the step's offset: the address field, 16-byte units, does not carry past a buffer).
  const unsigned short* my_scales = scale_rows + (warp / 2) * kChunkUnits * kSlabN + 32 * half + g;
  const __half2 codec_scale = __float2half2_rn(MmaCodec<F>::kHalfScale);
  for (int ch = 0; ch < nchunks; ++ch) {
    const uint64_t chunk_desc =
        step_descriptor(smem_base + (ch % S::kBuffers) * S::kChunkBytes, NB * kCoreBytes, kCoreBytes);
    const unsigned short* chunk_scales = my_scales + (ch % S::kBuffers) * (S::kScaleBytes / 2);
    for (int u0 = 0; u0 < kChunkUnits; u0 += P) {
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const int u = ch * kChunkUnits + u0 + i;
        uint32_t w[2 * kW];
#pragma unroll
        for (int k = 0; k < 2 * kW; ++k) w[k] = ring[i][k];
        if (((unit0 + u) & group_mask) == 0) {
          // Times the codec's power of two, exact in f16 (or inf, as through f32).
          const unsigned short* row = chunk_scales + ((u0 + i) >> group_shift) * kSlabN;
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            s2[t] = __half2half2(__ushort_as_half(row[8 * t]));
            if constexpr (MmaCodec<F>::kHalfScale != 1.0f) s2[t] = __hmul2(s2[t], codec_scale);
          }
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          uint32_t a[kRounds][4];
#pragma unroll
          for (int r = 0; r < kRounds; ++r) {
            // Register 2 hh + t % 2 of round r holds pair (tile t = 2 r + t % 2 of the half, hh).
            a[r][0] = b_register<F, true>(w, (4 * s + 2 * r) * 2, s2[2 * r]);
            a[r][1] = b_register<F, true>(w, (4 * s + 2 * r + 1) * 2, s2[2 * r + 1]);
            a[r][2] = b_register<F, true>(w, (4 * s + 2 * r) * 2 + 1, s2[2 * r]);
            a[r][3] = b_register<F, true>(w, (4 * s + 2 * r + 1) * 2 + 1, s2[2 * r + 1]);
          }
          const uint64_t desc = chunk_desc + (static_cast<uint32_t>((2 * (u0 + i) + s) * S::kStepBytes) >> 4);
          wgmma_fence();
#pragma unroll
          for (int r = 0; r < kRounds; ++r) wgmma_step<NB>(acc[r], a[r], desc);
          wgmma_commit();
          wgmma_wait<1>();  // the previous step's group: its registers may be rewritten
        }
        // The slot's next unit only now that its words are decoded: loaded before, it took other
        // registers, moved into the slot's at the end of the loop, where the move waited for the
        // load (Nsight Compute: 9% of the stalls at 32 rows).
        if (u + P < nunits) load_unit(u + P, ring[i]);
      }
    }
    // One barrier a chunk. Past the barrier at the end of chunk ch - 1, every warp had taken its
    // first step of chunk ch - 1, whose wait completed its wgmmas of chunk ch - 2: laid out
    // here, chunk ch + 1 takes their buffers; past this barrier, laid out before, chunk ch + 2
    // takes those of chunk ch - 1. The staging buffer holds a thread's own pieces only.
    if (ch + 1 < nchunks) {
      cp_async_wait<0>();  // chunk ch + 1
      if constexpr (!kLaidOut) lay_out_a(ch + 1);
      fence_proxy_async();
      __syncthreads();
      if (ch + 2 < nchunks) issue_a(ch + 2);
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int r = 0; r < kRounds; ++r) fence_accumulators(acc[r]);

  // Accumulator i of round r, 8-row group j = i / 4: weight column 64 slab + 8 (4 half + 2 r +
  // (i / 2) % 2) + g, A row 8 j + 2 c + i % 2.
  SplitKEpilogue<TA> epilogue{C, partials, counters, bias, bias_kind, M, N};
  constexpr float kUnscale = std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
  const bool split = gridDim.y > 1;
  if (active) {
#pragma unroll
    for (int r = 0; r < kRounds; ++r)
#pragma unroll
      for (int i = 0; i < 4 * NB; ++i) {
        const int row = row0 + 8 * (i / 4) + 2 * c + i % 2;
        const int col = slab * kSlabN + 8 * (4 * half + 2 * r + (i / 2) % 2) + g;
        epilogue.store(row, col, acc[r][i] * kUnscale, split);
      }
  }
  if (!split) return;
  const int col_begin = blockIdx.x * kSlabsPerBlock * kSlabN;
  // The row tile's own view: its rows from 0, its arrival counters past the other tiles'.
  const int64_t tile_offset = static_cast<int64_t>(row0) * N;
  const SplitKEpilogue<TA> tile_epilogue{C + tile_offset, partials + tile_offset,
                                         counters + (kWide<NB> ? blockIdx.z * gridDim.x : 0u), bias, bias_kind, M, N};
  tile_epilogue.template reduce_if_last<true>(col_begin, min(N, col_begin + kSlabsPerBlock * kSlabN),
                                             min(S::kRows, M - row0));
#else
  __trap();  // launched only where MARLIN_HAS_WGMMA (sm_90a builds)
#endif
}

// From 9 rows (H200, the stream kernel's 16-row variant against this one at M = 9-16: Llama-3.1-8B
// FP4 batch 16 3043.69 -> 3454.88 tok/s, INT2 3289.66 -> 3469.31, Qwen3-8B FP8 2498.82 -> 2698.47;
// at M <= 8 the stream kernel stays faster: batch 8 2206.82 against 2094.62 from 2 rows).
int wgmma_min_rows_from_env() {
  const int rows = env_int("MARLIN_WGMMA_ROWS", 9);
  return rows <= 0 ? 0 : rows;
}
int wgmma_min_rows = wgmma_min_rows_from_env();
// MARLIN_WGMMA_LAYOUT: 0 the kernel lays out A itself, 1 the layout kernel always, else by the
// split's length (kMinLaidOutUnits).
int wgmma_layout_from_env() {
  const int v = env_int("MARLIN_WGMMA_LAYOUT", -1);
  return v == 0 || v == 1 ? v : -1;
}
int wgmma_layout = wgmma_layout_from_env();
constexpr int kMinLaidOutUnits = 4 * kChunkUnits;
bool wgmma_forced = false;
// MARLIN_WGMMA_WIDE=0: more than 64 rows go to dequantize-and-cuBLAS, not the tiles of 96 or 128.
bool wgmma_wide_from_env() { return !env_is("MARLIN_WGMMA_WIDE", "0"); }
bool wgmma_wide = wgmma_wide_from_env();
std::atomic<int64_t> wgmma_launch_count{0};

// Per-device scratch for A's layout, grown on demand; at least 8 MB (64 rows of K = 65536), so
// that a captured decode graph never sees it moved.
uint4* a_layout_buffer(int device, int64_t bytes) {
  static std::mutex mutex;
  static std::vector<Tensor> per_device(64);
  std::lock_guard<std::mutex> lock(mutex);
  Tensor& t = per_device.at(static_cast<size_t>(device));
  if (!t.defined() || t.nbytes() < static_cast<size_t>(bytes))
    t = Tensor::empty({std::max<int64_t>(bytes, int64_t{8} << 20)}, DType::u8, Device::cuda(device));
  return static_cast<uint4*>(t.data_ptr());
}

// The K splits of a wide launch: enough to give every SM a block where the tiles are fewer,
// each split at least kMinLaidOutUnits long, and at most 4 (the partials are M x N floats each).
TiledSplits plan_wide_splits(int tiles, int sms, int units) {
  const int max_splits = std::clamp(units / kMinLaidOutUnits, 1, 4);
  const int splits = std::clamp(sms / tiles, 1, max_splits);
  int units_per_split = (units + splits - 1) / splits;
  units_per_split = (units_per_split + kChunkUnits - 1) / kChunkUnits * kChunkUnits;
  return {(units + units_per_split - 1) / units_per_split, units_per_split};
}

template <QuantFormat F, int NB, typename TA>
bool launch_wgmma_rows(const TA* A, const QuantizedWeight& W, const Tensor& bias, TA* C, int M, cudaStream_t stream) {
  using S = WgShape<F, NB>;
  const int N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = W.device().index;
  const int slabs = slabs_for(N);
  const int blocks_x = (slabs + kSlabsPerBlock - 1) / kSlabsPerBlock;
  const int units = static_cast<int>(padded_units(K));
  const int sms = multiprocessor_count(device);
  const int row_tiles = (M + S::kRows - 1) / S::kRows;
  // Both variants' shared memory limits set once; the plan takes the larger (the kernel's own
  // layout). The wide variant always takes the layout kernel: its own staging would not fit.
  static const int resident = [] {
    const int laid_out = resident_blocks_per_sm(reinterpret_cast<const void*>(&gemm_q_wgmma_kernel<F, NB, TA, true>),
                                                kThreads, S::kSmemBytes(true));
    if constexpr (kWide<NB>) {
      return laid_out;
    } else {
      return resident_blocks_per_sm(reinterpret_cast<const void*>(&gemm_q_wgmma_kernel<F, NB, TA, false>), kThreads,
                                    S::kSmemBytes(false));
    }
  }();
  const auto [splits, units_per_split] =
      kWide<NB> ? plan_wide_splits(blocks_x * row_tiles, sms, units)
                : plan_tiled_splits(M, K, format_bits(F), units, resident * sms, blocks_x);
  // The grid must fill half the SMs, a quarter for weights over 4 MB (H200, 4096x4096 INT2 at
  // M = 32: 15.0 us against 23.2 for the dequantize-and-cuBLAS path; 2048x1536 FP8: 11.6 against 10.2).
  const int min_fill_percent = W.nbytes() > (size_t{4} << 20) ? 25 : 50;
  if (blocks_x * row_tiles * splits * 100 < sms * min_fill_percent && !wgmma_forced) return false;
  SplitKBuffers buffers = split_k_buffers(device, splits, M, N, blocks_x * row_tiles);
  const uint32_t* stream_words = W.tiled.data<uint32_t>();
  const auto* weights = reinterpret_cast<const uint4*>(stream_words);
  const auto* scales = reinterpret_cast<const unsigned short*>(stream_words + weight_words<F>(K, N));
  const void* bias_ptr = bias.defined() ? bias.data_ptr() : nullptr;
  const BiasKind kind = bias_kind(bias.dtype(), bias.defined());
  const bool pdl = pdl_enabled(device);
  const dim3 grid(blocks_x, splits, row_tiles);
  // A laid out once for the launch where every block's split is long enough (H200, FP4 M = 17:
  // 8192x28672 68.1 -> 60.5 us; 4096x4096, two chunks a split, 12.3 -> 14.3 us).
  const bool laid_out =
      kWide<NB> || wgmma_layout == 1 || (wgmma_layout < 0 && units_per_split >= kMinLaidOutUnits);
  uint4* a_layout = nullptr;
  Tensor wide_layout;  // a wide launch's layout, from the caching allocator (stream-ordered)
  if (laid_out) {
    const int chunks = units / kChunkUnits;
    const int64_t bytes = static_cast<int64_t>(row_tiles) * chunks * S::kChunkBytes;
    if constexpr (kWide<NB>) {
      wide_layout = Tensor::empty({bytes}, DType::u8, Device::cuda(device));
      a_layout = static_cast<uint4*>(wide_layout.data_ptr());
    } else {
      a_layout = a_layout_buffer(device, bytes);
    }
    const int pieces = row_tiles * chunks * S::kRows * kChunkK / 8;
    MARLIN_CUDA_CHECK(launch_maybe_pdl(pdl, wgmma_layout_a_kernel<NB, TA>, dim3((pieces + 255) / 256), dim3(256), 0,
                                       stream, A, reinterpret_cast<uint32_t*>(a_layout), M, K, chunks, pieces),
                      "gemm_q");
  }
  auto* kernel = gemm_q_wgmma_kernel<F, NB, TA, true>;
  if constexpr (!kWide<NB>) {
    if (!laid_out) kernel = gemm_q_wgmma_kernel<F, NB, TA, false>;
  }
  MARLIN_CUDA_CHECK(launch_maybe_pdl(pdl, kernel, grid, dim3(kThreads), S::kSmemBytes(laid_out), stream, A,
                                     static_cast<const uint4*>(a_layout), weights, scales, bias_ptr, kind, C,
                                     buffers.partials, buffers.counters, M, N, K, units, W.group_size, units_per_split,
                                     slabs),
                    "gemm_q");
  wgmma_launch_count.fetch_add(1, std::memory_order_relaxed);
  return true;
}

template <QuantFormat F, typename TA>
bool launch_wgmma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C, cudaStream_t stream) {
  const int M = static_cast<int>(A.size(0));
  const TA* a = static_cast<const TA*>(A.data_ptr());
  TA* c = static_cast<TA*>(C.data_ptr());
  if (M <= 16) return launch_wgmma_rows<F, 2, TA>(a, W, bias, c, M, stream);
  if (M <= 32) return launch_wgmma_rows<F, 4, TA>(a, W, bias, c, M, stream);
  if (M <= kMaxWgmmaRows) return launch_wgmma_rows<F, 8, TA>(a, W, bias, c, M, stream);
  // The tile height that pads M the least (128 on a tie): 65-96 and 129-192 rows in tiles of 96.
  const auto padded = [M](int rows) { return (M + rows - 1) / rows * rows; };
  if (padded(96) < padded(128)) return launch_wgmma_rows<F, 12, TA>(a, W, bias, c, M, stream);
  return launch_wgmma_rows<F, 16, TA>(a, W, bias, c, M, stream);
}

template <QuantFormat F>
bool dispatch_wgmma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C, cudaStream_t stream) {
  bool launched = false;
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", { launched = launch_wgmma<F, TA>(A, W, bias, C, stream); });
  return launched;
}

bool device_has_wgmma(int device) {
#if defined(MARLIN_HAS_WGMMA)
  int major = 0;
  MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "gemm_q");
  return major == 9;
#else
  (void)device;
  return false;  // an sm_90a build only
#endif
}

}  // namespace

void set_wgmma_gemm(int min_rows, bool forced) {
  wgmma_min_rows = min_rows;
  wgmma_forced = forced;
}
void set_wgmma_layout(int mode) { wgmma_layout = mode; }
void set_wgmma_wide(bool on) { wgmma_wide = on; }
void reset_wgmma_gemm() {
  wgmma_min_rows = wgmma_min_rows_from_env();
  wgmma_wide = wgmma_wide_from_env();
  wgmma_forced = false;
  wgmma_layout = wgmma_layout_from_env();
}

int64_t wgmma_gemm_launches() { return wgmma_launch_count.load(std::memory_order_relaxed); }
bool wgmma_gemm_available(int device) { return device_has_wgmma(device); }

bool gemm_q_wgmma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C, cudaStream_t stream) {
  const int64_t M = A.size(0);
  if (wgmma_min_rows <= 0 || M < wgmma_min_rows || (M > kMaxWgmmaRows && !wgmma_wide) ||
      !device_has_wgmma(A.device().index))
    return false;
  // Tiles of 96 or 128 rows up to 256 rows, on weights of over 2^24 values. There they beat
  // dequantizing into cuBLAS (H200, 8192x28672 FP4 at M = 128: 121.2 against 373.5 us; 14336x4096 at 256:
  // 79.6 against 96.4); 4096x4096 at 128 rows took 34.0 against 26.1, and from 512 rows
  // cuBLAS's own tiles win (8192x28672 FP4 at 1024: 1043.1 against 912.6).
  if (M > kMaxWgmmaRows && (M > kMaxWideRows || W.K * W.N <= (int64_t{1} << 24)) && !wgmma_forced) return false;
  // Below 17 rows, FP8 and INT2 weights of over 2^27 values stay on the stream kernel, which
  // reads their bytes faster than this kernel decodes them (H200, 8192x28672 at M = 16: FP8 73.8
  // against 79.2 us, INT2 44.8 against 53.7; FP4 59.8 against 55.3; 4096x28672 gains in all three).
  if (M < 17 && W.format != QuantFormat::fp4_e2m1 && W.K * W.N > (int64_t{1} << 27) && !wgmma_forced) return false;
  switch (W.format) {
    case QuantFormat::fp4_e2m1: return dispatch_wgmma<QuantFormat::fp4_e2m1>(A, W, bias, C, stream);
    case QuantFormat::fp8_e4m3: return dispatch_wgmma<QuantFormat::fp8_e4m3>(A, W, bias, C, stream);
    case QuantFormat::int2: return dispatch_wgmma<QuantFormat::int2>(A, W, bias, C, stream);
  }
  return false;
}

}  // namespace marlin::cuda
