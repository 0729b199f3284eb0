// Tensor-core quantized GEMM for M <= 16 (decode) over the tile layout of gemm_q_mma.cu.
//
// Stream-K: the layout stores the whole weight as one stream (slab after slab, unit after unit,
// then the scale rows in the same order), cut into rounds of one to kUnitsAlign units (a slab is
// whole rounds; launch_stream picks the size). Every warp of the grid takes an equal contiguous
// range of rounds, crossing slab boundaries where it falls,
// so every SM gets the same number of bytes whatever the shape (a grid of whole slabs x K
// splits leaves up to a quarter of the SMs idle at the end). A warp copies its range with
// cp.async into a private ring of shared-memory stages (all but one in flight): the weights, the
// scale rows, and the rows of A it needs, so no block barrier is ever taken. The mma runs on the
// unscaled codes; each group's f32 sums are scaled once per group. Where a warp's range ends
// inside a slab it writes its partial sums; the last warp to finish a slab (a release/acquire
// arrival count) adds them in a fixed order (deterministic) and writes C.
#include <algorithm>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/pdl.cuh"

namespace marlin::cuda {
namespace {

using namespace tile;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Stages of a warp's ring (one computed, the rest in flight). FP4 and INT2 at M = 1 keep one
// stage in flight, not three: the grid's 2112 warps then have 4 MB of weights requested at once
// (about 1 us of the 4.2 TB/s the device copies at), not 13 MB (3 us) that mostly wait in queues.
// With three, a launch's blocks ended in the order they were placed, the last ~3 us after the
// first in the gate/up GEMM (Llama-3.1-8B batch 1, traced): a block whose first stages were
// requested later stayed behind by about one queue's wait.
// H200, Llama-3.1-8B batch 1, tok/s: 3 stages against 4 (two builds, one call) FP4 438.71 /
// 439.45 against 428.10 / 426.36, INT2 518.83 against 508.59; 2 against 3 (one binary) FP4
// 450.21 / 454.12 against 434.54 / 431.51, INT2 526.61 against 512.56. FP8 at M = 1 measured
// slower with 3 (346.76 against 353.84) and with 5 (344.92 / 343.89 against 349.91 / 349.57), and
// M = 8 slower with 3 (FP4 batch 8 2180.73 against 2220.13), so they keep 4.
constexpr int kStages = 4;
constexpr int kStagesM1 = 2;
// Parts of a slab above which M > 12 goes to the batch kernel (H200, M = 16: 16 parts
// (4096x4096, 4096x6144) and 28 (14336x4096) ran 15-25% faster there, 8 and fewer (4096x14336,
// 2048x1536) as fast or slower; at M = 9 the stream kernel was as fast or faster at 16 and 28).
constexpr int kMaxSlabParts16 = 12;
constexpr int kMinBatchRows = 13;

// One stage of a warp's ring: weights and scale rows (Stage), then R rows of A for its units
// (padded so the rows start on different banks).
template <QuantFormat F, int G, int R>
struct StreamStage {
  using St = Stage<F, G>;
  static constexpr int kARowHalves = St::kUnits * kUnitK + 8;
  static constexpr int kBytes = St::kBytes + R * kARowHalves * 2;
};

template <QuantFormat F, int G, int R, int S>
constexpr int stream_smem_bytes() {
  return kWarps * S * StreamStage<F, G, R>::kBytes;
}

// First warp whose range holds round x (ranges: [w R / W, (w + 1) R / W)).
__device__ __forceinline__ int64_t warp_of_round(int64_t x, int64_t W, int64_t R) {
  return ((x + 1) * W + R - 1) / R - 1;
}

// G: units per scale group (1, 2, 4, 8). R: A rows held (1 at M = 1, 8 when M <= 8, else 16).
// kStages: the depth of each warp's ring (the file's kStages, or kStagesM1 at M = 1).
// kSiluMul (one row, R = 8): A is silu(gate) * up, computed as each stage lands: gate's piece is
// copied into the stage's row 0 and up's into its row 1, and the warp writes the product over
// row 0 (rounded to TA as silu_mul rounds it) before its mma read it. A decode step's MLP then
// runs its down projection without a SwiGLU launch between the two GEMMs.
// (A one-row variant with a five-deep ring measured no faster at M = 1 on an H200; neither did
// one whose blocks copied their span of the row once, as f16, before the main loop.)
template <QuantFormat F, int G, int R, typename TA, bool kSwap, int kStages, bool kSiluMul = false>
__global__ void __launch_bounds__(kThreads, R <= 8 ? 4 : 3)
    gemm_q_stream_kernel(const TA* __restrict__ A, const uint4* __restrict__ weights,
                         const uint4* __restrict__ scale_stream, const void* __restrict__ bias,
                         BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                         unsigned* __restrict__ counters, int M, int N, int K, int units,
                         int64_t rounds, int round_stages, int64_t used_warps, int max_parts,
                         const TA* __restrict__ up) {
  using Cd = MmaCodec<F>;
  using St = Stage<F, G>;
  using SS = StreamStage<F, G, R>;
  constexpr int kW = Cd::kWords;
  constexpr int kU = St::kUnits;
  constexpr int kGroupShift = G == 1 ? 0 : G == 2 ? 1 : G == 4 ? 2 : 3;
  constexpr int kScaleRows = St::kScaleRows;
  constexpr int kAVecPerRow = kU * kUnitK / 8;  // 16-byte pieces of one A row per stage
  static_assert(kScaleRows * (kScaleRowBytes / 16) <= 32, "one 16-byte scale copy per lane");
  static_assert(!kSiluMul || (R == 8 && kSwap), "silu(gate) * up on the one-row path of the 8-row kernel");
  extern __shared__ __align__(16) unsigned char smem[];

  // A dependent launched with PDL (the next GEMM) may be scheduled as soon as SMs free up: its
  // own weight prologue then overlaps this kernel's tail.
  TRACE_START
  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* ring = smem + warp * kStages * SS::kBytes;
  // used_warps <= rounds, so every warp that runs has at least one round: a slab's parts are
  // exactly the warps between its first and its last (an empty warp there would never arrive).
  const int64_t W = used_warps;
  const int64_t wg = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (wg >= W) return;
  const int64_t r0 = wg * rounds / W, r1 = (wg + 1) * rounds / W;
  const int total_stages = static_cast<int>(r1 - r0) * round_stages;
  const int rows_a = min(M, R);
  const int64_t first_unit = r0 * round_stages * kU;  // in the whole stream

  // A stage's copies: its weights and scale rows (which no earlier kernel writes), then its rows
  // of A (the previous kernel's output). issue_unit: the slab-local unit of the next A copy.
  int issue_unit = static_cast<int>(first_unit % units);
  const uint64_t policy = weight_l2_policy();
  auto issue_weights = [&](int s) {
    if (s >= total_stages) return;
    uint4* dst = reinterpret_cast<uint4*>(ring + (s % kStages) * SS::kBytes);
    const int64_t gu = first_unit + static_cast<int64_t>(s) * kU;
    const uint4* src = weights + gu * kW * 32 + lane;
#pragma unroll
    for (int i = 0; i < kU * kW; ++i) cp_async16_policy(dst + i * 32 + lane, src + i * 32, policy);
    if (lane < kScaleRows * (kScaleRowBytes / 16))
      cp_async16_policy(dst + St::kWeightWords + lane, scale_stream + (gu >> kGroupShift) * (kScaleRowBytes / 16) + lane,
                        policy);
  };
  // A copies: a lane's pieces (row, 16-byte column v) are the same every stage, only the unit
  // moves, so their rows, offsets and predicates are computed once (fully unrolled: no loop).
  constexpr int kACopies = (R * kAVecPerRow + 31) / 32;
  const TA* a_src[kACopies];
  int a_off[kACopies], a_col[kACopies];
  bool a_row_in[kACopies];
#pragma unroll
  for (int j = 0; j < kACopies; ++j) {
    const int i = lane + 32 * j, row = i / kAVecPerRow, v = i % kAVecPerRow;
    a_row_in[j] = row < rows_a || (kSiluMul && row == 1);
    a_src[j] = kSiluMul && row == 1 ? up : A + static_cast<int64_t>(row < rows_a ? row : 0) * K;
    a_off[j] = (row * SS::kARowHalves + v * 8) * 2;
    a_col[j] = v * 8;
  }
  auto issue_a = [&](int s) {
    if (s >= total_stages) return;
    unsigned char* a_dst = ring + (s % kStages) * SS::kBytes + St::kBytes;
    const int k0 = issue_unit * kUnitK;
#pragma unroll
    for (int j = 0; j < kACopies; ++j) {
      const int k = k0 + a_col[j];
      const bool in = k < K;
      if (a_row_in[j]) cp_async16_or_zero(a_dst + a_off[j], a_src[j] + (in ? k : 0), in);
    }
    issue_unit += kU;
    if (issue_unit == units) issue_unit = 0;
  };
  auto issue = [&](int s) {
    issue_weights(s);
    issue_a(s);
    cp_async_commit();
  };

  // R <= 8 swaps the operands: the weights are the mma's A (two 8-column tiles, 16 rows) and
  // the activations its B (8 columns = 8 rows of A), so one mma covers 16 columns, half as many
  // mma and accumulators as with A's 16-row fragment of which at most 8 rows are used.
  static_assert(!kSwap || R <= 8, "swapped operands hold up to 8 rows of A");
  constexpr int kAccTiles = kSwap ? 4 : 8;
  float acc[kAccTiles][4], gacc[kAccTiles][4];
  // Offset codes (INT2): the group's activation sums of this lane's rows, by an mma with ones.
  constexpr bool kOffset = offset_codes<F>();
  float gsum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int t = 0; t < kAccTiles; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = gacc[t][i] = 0.0f;
  // Row of C (token) and slab column of accumulator acc[t][i] of this lane.
  auto acc_row = [&](int t, int i) { return kSwap ? 2 * (lane % 4) + i % 2 : lane / 4 + 8 * (i / 2); };
  auto acc_col = [&](int t, int i) {
    return kSwap ? 16 * t + lane / 4 + 8 * (i / 2) : t * 8 + 2 * (lane % 4) + (i % 2);
  };

  // Writes this warp's sums for `slab` (C, or a partial that the slab's last warp adds up).
  constexpr float kUnscale = Cd::kGroupScale * (std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale);
  const int64_t rounds_per_slab = units / kU / round_stages;
  auto flush = [&](int64_t slab) {
    const int64_t w_first = warp_of_round(slab * rounds_per_slab, W, rounds);
    const int64_t w_last = warp_of_round((slab + 1) * rounds_per_slab - 1, W, rounds);
    const int parts = static_cast<int>(w_last - w_first + 1);
    const int col0 = static_cast<int>(slab) * kSlabN;
    if (parts == 1) {
#pragma unroll
      for (int t = 0; t < kAccTiles; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = acc_row(t, i), col = col0 + acc_col(t, i);
          if (row < M && col < N)
            C[static_cast<int64_t>(row) * N + col] = from_float<TA>(acc[t][i] * kUnscale + load_bias(bias, bias_kind, col));
        }
      return;
    }
    const int part = static_cast<int>(wg - w_first);
    float* mine = partials + (slab * max_parts + part) * (R * kSlabN);
#pragma unroll
    for (int t = 0; t < kAccTiles; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = acc_row(t, i);
        if (row < M) mine[row * kSlabN + acc_col(t, i)] = acc[t][i];
      }
    __syncwarp();  // the lanes' partials, released by lane 0's arrival
    unsigned arrived = 0;
    if (lane == 0) arrived = arrive_acq_rel(&counters[slab]);
    arrived = __shfl_sync(0xffffffffu, arrived, 0);
    if (arrived != static_cast<unsigned>(parts - 1)) return;
    __syncwarp();  // lane 0 acquired the other parts' partials
    // Four columns per lane, kBatch parts' loads in flight: one L2 round trip for up to kBatch
    // parts, twice as many at M = 1, where two lanes share a column quad and split its parts. A
    // fixed order: the sums are deterministic. The long-K, narrow projections have ~33 parts a
    // slab (14336x4096: 2112 warps over 64 slabs), whose last warp's sum was the launch's tail
    // (blocks ending 4-5 us after the median); 18 loads a lane take 36 parts at once (H200,
    // Llama-3.1-8B batch 1: FP8 322 against 297-300 tok/s, FP4 396-397 against 388-389). INT2
    // keeps 8 (with 18: 392-394 against 402-403; its loop had 90 registers, the batch takes 126).
    // Four for 16 rows, which have fewer registers to spare.
    const float4* first = reinterpret_cast<const float4*>(partials + slab * max_parts * (R * kSlabN));
    constexpr int kPartStride = R * kSlabN / 4, kQuads = kSlabN / 4;
    constexpr int kBatch = !kSwap ? 4 : F == QuantFormat::int2 ? 8 : 18;
    const int items = M * kQuads, split = items < 32 ? 2 : 1;
    for (int base = 0; base < items * split; base += 32) {
      const int slot = base + lane, idx = slot / split, half = slot % split;
      const bool active = slot < items * split;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int p0 = half * kBatch; active && p0 < parts; p0 += kBatch * split) {
        float4 part[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j)
          part[j] = p0 + j < parts ? __ldcg(first + (p0 + j) * kPartStride + idx) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          v.x += part[j].x;
          v.y += part[j].y;
          v.z += part[j].z;
          v.w += part[j].w;
        }
      }
      if (split == 2) {
        v.x += __shfl_xor_sync(0xffffffffu, v.x, 1);
        v.y += __shfl_xor_sync(0xffffffffu, v.y, 1);
        v.z += __shfl_xor_sync(0xffffffffu, v.z, 1);
        v.w += __shfl_xor_sync(0xffffffffu, v.w, 1);
      }
      if (!active || half != 0) continue;
      const int row = idx / kQuads, col = col0 + 4 * (idx % kQuads);
      const float out[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (col + j < N)
          C[static_cast<int64_t>(row) * N + col + j] = from_float<TA>(out[j] * kUnscale + load_bias(bias, bias_kind, col + j));
    }
    if (lane == 0) counters[slab] = 0;  // ready for the next launch
  };

  // Prologue: the first stages' weights are requested before waiting for the previous kernel
  // (pdl.cuh), and all of them join the first commit group, so the wait of stage s (at most
  // kStages - 2 groups pending) still covers its weights and its A.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue_weights(s);
  pdl_wait();
  TRACE_WAITED
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    issue_a(s);
    cp_async_commit();
  }
  int64_t slab = first_unit / units;
  int unit_in_slab = static_cast<int>(first_unit % units);
  const int a_row = lane / 4, c = lane % 4;
  for (int s = 0; s < total_stages; ++s) {
    cp_async_wait<kStages - 2>();
    __syncwarp();  // other lanes' scale rows and A; the slot computed last is free again
    issue(s + kStages - 1);
    const unsigned char* slot = ring + (s % kStages) * SS::kBytes;
    const uint4* wslot = reinterpret_cast<const uint4*>(slot);
    const __half* srows = reinterpret_cast<const __half*>(wslot + St::kWeightWords);
    const uint32_t* a_slot = reinterpret_cast<const uint32_t*>(slot + St::kBytes);
    if constexpr (kSiluMul) {
      // Row 0 = silu(row 0) * row 1, kU x 32 values, a lane's share, then every lane's.
      TA* gate_row = reinterpret_cast<TA*>(const_cast<unsigned char*>(slot) + St::kBytes);
      const TA* up_row = gate_row + SS::kARowHalves;
#pragma unroll
      for (int i = lane; i < kU * kUnitK; i += 32)
        gate_row[i] = nn::silu_mul_value<TA>(to_float(gate_row[i]), to_float(up_row[i]));
      __syncwarp();
    }
    // R = 1: the stage's row, kU x 16 words, converted one word a lane (not four by each of the
    // 4 lanes that use them while the other 28 convert zeros), then shuffled to those lanes.
    constexpr int kRowWords = kU * kUnitK / 2, kRowRegs = (kRowWords + 31) / 32;
    uint32_t row_f16[kRowRegs];
    if constexpr (R == 1) {
#pragma unroll
      for (int r = 0; r < kRowRegs; ++r) {
        const int i = lane + 32 * r;
        row_f16[r] = activation_pair_as_f16<TA>(i < kRowWords ? a_slot[i] : 0u);
      }
    }
#pragma unroll
    for (int a = 0; a < kU; ++a) {
      // A: lane holds rows a_row (and a_row + 8 when R == 16), weight rows 8c..8c+7 of the
      // unit: one 16-byte read per row (the layout's k order), zeros for rows past M.
      uint4 lo = make_uint4(0, 0, 0, 0), hi = make_uint4(0, 0, 0, 0);
      if constexpr (R == 1) {
        // Word 4c + j of unit a is word 16a + 4c + j of the row. Lanes past row 0 get other
        // lanes' words: they feed only the mma's columns 1-7, tokens that M = 1 never stores.
        const int src = 16 * (a % 2) + 4 * c;
        lo.x = __shfl_sync(0xffffffffu, row_f16[a / 2], src);
        lo.y = __shfl_sync(0xffffffffu, row_f16[a / 2], src + 1);
        lo.z = __shfl_sync(0xffffffffu, row_f16[a / 2], src + 2);
        lo.w = __shfl_sync(0xffffffffu, row_f16[a / 2], src + 3);
      } else {
        if (a_row < rows_a)
          lo = *reinterpret_cast<const uint4*>(a_slot + (a_row * SS::kARowHalves + a * kUnitK + 8 * c) / 2);
        if (R == 16 && a_row + 8 < rows_a)
          hi = *reinterpret_cast<const uint4*>(a_slot + ((a_row + 8) * SS::kARowHalves + a * kUnitK + 8 * c) / 2);
        lo = activations_as_f16<TA>(lo);
        if (R == 16) hi = activations_as_f16<TA>(hi);
      }
      uint32_t w[kW * 4];
#pragma unroll
      for (int j = 0; j < kW; ++j) {
        const uint4 v = wslot[(a * kW + j) * 32 + lane];
        w[4 * j] = v.x;
        w[4 * j + 1] = v.y;
        w[4 * j + 2] = v.z;
        w[4 * j + 3] = v.w;
      }
      // Groups within a stage (G <= kU) sit at compile-time positions. Longer ones span stages,
      // and a warp's range may begin or end inside one (rounds can be single stages): its
      // first stage starts a group and its last ends one. A group's sums start at zero: zeroed
      // once before the loop and again where a group ends (not where one starts, which at
      // G > kU is a run-time test: a select a sum every stage).
      const bool group_end =
          G <= kU ? a % G == G - 1 : a == kU - 1 && (s == total_stages - 1 || (unit_in_slab + kU) % G == 0);
      constexpr uint32_t kOnes = 0x3c003c00u;  // f16 1.0 twice
      // Register (step, tile, h) of the layout: the B fragment of 8-column tile `tile`.
      auto wreg = [&](int step, int tile, int h) { return b_register<F, false>(w, (step * 8 + tile) * 2 + h, __half2()); };
      if constexpr (kSwap) {
        const uint32_t x[2][2] = {{lo.x, lo.y}, {lo.z, lo.w}};
#pragma unroll
        for (int step = 0; step < 2; ++step)
#pragma unroll
          for (int t = 0; t < kAccTiles; ++t) {
            const uint32_t wfrag[4] = {wreg(step, 2 * t, 0), wreg(step, 2 * t + 1, 0), wreg(step, 2 * t, 1),
                                       wreg(step, 2 * t + 1, 1)};
            mma_16816(gacc[t], wfrag, x[step][0], x[step][1]);
          }
        if constexpr (kOffset) {
          const uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};
#pragma unroll
          for (int step = 0; step < 2; ++step) mma_16816(gsum, ones, x[step][0], x[step][1]);
        }
      } else {
        const uint32_t afrag[2][4] = {{lo.x, hi.x, lo.y, hi.y}, {lo.z, hi.z, lo.w, hi.w}};
#pragma unroll
        for (int step = 0; step < 2; ++step)
#pragma unroll
          for (int t = 0; t < kAccTiles; ++t) mma_16816(gacc[t], afrag[step], wreg(step, t, 0), wreg(step, t, 1));
        if constexpr (kOffset)
#pragma unroll
          for (int step = 0; step < 2; ++step) mma_16816(gsum, afrag[step], kOnes, kOnes);
      }
      if (group_end) {
        const __half* srow = srows + (G <= kU ? (a / G) * kSlabN : 0);
        // The group's sum of (c - 1.5) a for offset codes: c 4^j a 2^-24 summed by the mma, times
        // 4^-j, less 1.5 a 2^-24 (the stored sums are scaled by kGroupScale = 2^24 at the end).
        float offset[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) offset[i] = kOffset ? gsum[i] * (-1.5f / Cd::kGroupScale) : 0.0f;
        auto group_sum = [&](int t, int i) {
          const int tile = kSwap ? 2 * t + i / 2 : t;
          return kOffset ? fmaf(gacc[t][i], tile_factor<F>(tile), offset[i]) : gacc[t][i];
        };
#pragma unroll
        for (int t = 0; t < kAccTiles; ++t) {
          float2 sc;
          if constexpr (kSwap) {  // columns 16t + a_row (i < 2) and 16t + 8 + a_row (i >= 2)
            sc = make_float2(__half2float(srow[16 * t + a_row]), __half2float(srow[16 * t + 8 + a_row]));
            acc[t][0] = fmaf(group_sum(t, 0), sc.x, acc[t][0]);
            acc[t][1] = fmaf(group_sum(t, 1), sc.x, acc[t][1]);
            acc[t][2] = fmaf(group_sum(t, 2), sc.y, acc[t][2]);
            acc[t][3] = fmaf(group_sum(t, 3), sc.y, acc[t][3]);
          } else {  // columns 8t + 2c and 8t + 2c + 1
            sc = __half22float2(*reinterpret_cast<const __half2*>(srow + t * 8 + 2 * c));
            acc[t][0] = fmaf(group_sum(t, 0), sc.x, acc[t][0]);
            acc[t][1] = fmaf(group_sum(t, 1), sc.y, acc[t][1]);
            acc[t][2] = fmaf(group_sum(t, 2), sc.x, acc[t][2]);
            acc[t][3] = fmaf(group_sum(t, 3), sc.y, acc[t][3]);
          }
        }
#pragma unroll
        for (int t = 0; t < kAccTiles; ++t)
#pragma unroll
          for (int i = 0; i < 4; ++i) gacc[t][i] = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) gsum[i] = 0.0f;
      }
    }
    // Slab boundaries fall on round boundaries, which are group boundaries.
    unit_in_slab += kU;
    if (unit_in_slab == units) {
      flush(slab);
#pragma unroll
      for (int t = 0; t < kAccTiles; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
      ++slab;
      unit_in_slab = 0;
    }
  }
  cp_async_wait<0>();
  if (total_stages > 0 && unit_in_slab != 0) flush(slab);
  if constexpr (R <= 8) { TRACE_END(gemm) } else { TRACE_END(gemm16) }
}

int forced_round_stages = 0;  // set_stream_round_stages

struct StreamScratch {
  Tensor partials, counters;
};

// up: silu(A) * up is the product's input (kSiluMul).
template <QuantFormat F, int G, int R, typename TA, bool kSwap = R <= 8, int S = kStages, bool kSiluMul = false>
void launch_stream(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                   cudaStream_t stream, const void* up = nullptr) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int slabs = slabs_for(N);
  const int units = static_cast<int>(padded_units(K));
  constexpr int kU = Stage<F, G>::kUnits;
  const int64_t stages = static_cast<int64_t>(slabs) * (units / kU);
  // As many warps as fit (bytes in flight), at least a round each. The partials (at most two
  // per warp, M x 64 floats, written and soon read back) mostly stay in L2.
  static const int resident = resident_blocks_per_sm(
      reinterpret_cast<const void*>(&gemm_q_stream_kernel<F, G, R, TA, kSwap, S, kSiluMul>), kThreads, stream_smem_bytes<F, G, R, S>());
  const int64_t capacity = static_cast<int64_t>(resident) * multiprocessor_count(device) * kWarps;
  // Rounds: the unit of a warp's share. Whole rounds of kUnitsAlign units left the warps with one
  // round more than others a quarter to a half longer than the rest (3.4 rounds a warp on
  // 4096x28672), and the launch ends with the longest. At M = 1 the round is the size (single
  // stages up to kUnitsAlign units) whose longest share is shortest, the longer on a tie (H200:
  // FP4 4096x28672 21.0 against 23.0 us, FP8 4096x4096 8.8 against 10.6). Not at M = 8, where
  // the slabs' last warps then sum twice the parts of M rows (FP4 4096x4096 13.8 against 10.5).
  auto longest_share = [&](int64_t round_stages) {
    const int64_t rounds = stages / round_stages, warps = std::max<int64_t>(1, std::min(capacity, rounds));
    return (rounds + warps - 1) / warps * round_stages;
  };
  int round_stages = kUnitsAlign / kU;
  static const bool whole_rounds = env_is("MARLIN_STREAM_FINE_ROUNDS", "0");
  if (R <= 8 && M == 1 && !whole_rounds)
    for (int r = kUnitsAlign / kU / 2; r >= 1; r /= 2)
      if (longest_share(r) < longest_share(round_stages)) round_stages = r;
  if (R <= 8 && forced_round_stages > 0) round_stages = std::min(forced_round_stages, kUnitsAlign / kU);
  const int64_t rounds = stages / round_stages;
  const int64_t rounds_per_slab = units / kU / round_stages;
  const int64_t warps = std::max<int64_t>(1, std::min(capacity, rounds));
  const int blocks = static_cast<int>((warps + kWarps - 1) / kWarps);
  const int64_t min_rounds = std::max<int64_t>(rounds / warps, 1);
  const int max_parts = static_cast<int>(std::min<int64_t>(warps, rounds_per_slab / min_rounds + 2));
  if constexpr (R == 16) {
    // Many parts a slab (long K, few slabs): the last warp of a slab sums them alone, M rows
    // of 64 columns a part, a few parts an L2 round trip (14336x4096 at M = 16: 28 parts,
    // 34.0 us against 29.1 on an H200). gemm_q_batch.cu's blocks share that sum.
    // (MARLIN_BATCH_GEMM=0 keeps them here, to measure both.)
    static const bool stream_only = env_is("MARLIN_BATCH_GEMM", "0");
    if (!stream_only && M >= kMinBatchRows && rounds_per_slab / min_rounds > kMaxSlabParts16 &&
        gemm_q_batch(A, W, bias, C, stream) == BatchLaunch::launched)
      return;
  }

  static std::mutex mutex;
  static std::vector<StreamScratch> scratch(64);
  float* partials = nullptr;
  unsigned* counters = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    StreamScratch& ws = scratch.at(static_cast<size_t>(device));
    const int64_t floats = static_cast<int64_t>(slabs) * max_parts * R * kSlabN;
    if (!ws.partials.defined() || ws.partials.numel() < floats)
      ws.partials = Tensor::empty({std::max<int64_t>(floats, 1 << 20)}, DType::f32, Device::cuda(device));
    if (!ws.counters.defined() || ws.counters.numel() < slabs)
      ws.counters = Tensor::zeros({std::max<int64_t>(slabs, 4096)}, DType::u32, Device::cuda(device));
    partials = ws.partials.data<float>();
    counters = ws.counters.data<unsigned>();
  }
  const uint32_t* words = W.tiled.data<uint32_t>();
  MARLIN_CUDA_CHECK(
      launch_maybe_pdl(pdl_enabled(device), gemm_q_stream_kernel<F, G, R, TA, kSwap, S, kSiluMul>, dim3(blocks), dim3(kThreads),
                       stream_smem_bytes<F, G, R, S>(), stream, static_cast<const TA*>(A.data_ptr()),
                       reinterpret_cast<const uint4*>(words), reinterpret_cast<const uint4*>(words + weight_words<F>(K, N)),
                       bias.defined() ? bias.data_ptr() : nullptr, bias_kind(bias.dtype(), bias.defined()),
                       static_cast<TA*>(C.data_ptr()), partials, counters, M, N, K, units, rounds, round_stages, warps, max_parts,
                       static_cast<const TA*>(up)),
      "gemm_q");
}

template <QuantFormat F, typename TA>
void dispatch_stream(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                     cudaStream_t stream) {
  const int64_t M = A.size(0);
  // INT2 at M = 1 takes the one-row kernel: its ring of 2 KB stages then fits 4 blocks an SM,
  // not 3 (H200: 4096x28672 14.9 against 18.2 us, Llama-3.1-8B INT2 batch 1 497.35 against
  // 475.34 tok/s). FP4 measured the same on both (420.85 / 421.81 tok/s) and FP8 slower (4096x28672
  // 35.7 against 32.0 us), so they keep the 8-row kernel. FP4 and INT2 at M = 1 run the shorter
  // ring (kStagesM1).
#define MARLIN_STREAM_G(G)                                                                            \
  if constexpr (F == QuantFormat::int2) {                                                             \
    if (M == 1 && one_row) return launch_stream<F, G, 1, TA, true, kStagesM1>(A, W, bias, C, stream); \
  }                                                                                                   \
  if constexpr (F == QuantFormat::fp4_e2m1) {                                                         \
    if (M == 1) return launch_stream<F, G, 8, TA, true, kStagesM1>(A, W, bias, C, stream);            \
  }                                                                                                   \
  if (M <= 8) launch_stream<F, G, 8, TA>(A, W, bias, C, stream);                                      \
  else launch_stream<F, G, 16, TA>(A, W, bias, C, stream);                                            \
  return;
  // MARLIN_STREAM_SWAP=0: the unswapped M <= 8 kernel at group 128, to measure the swap against;
  // MARLIN_STREAM_ROW1=0: INT2 at M = 1 on the 8-row kernel.
  static const bool unswapped = env_is("MARLIN_STREAM_SWAP", "0");
  static const bool one_row = !env_is("MARLIN_STREAM_ROW1", "0");
  if (unswapped && M <= 8 && W.group_size == 4 * kUnitK) return launch_stream<F, 4, 8, TA, false>(A, W, bias, C, stream);
  switch (W.group_size / kUnitK) {
    case 1: MARLIN_STREAM_G(1)
    case 2: MARLIN_STREAM_G(2)
    case 4: MARLIN_STREAM_G(4)
    default: MARLIN_STREAM_G(8)
  }
#undef MARLIN_STREAM_G
}

template <typename TA>
void dispatch_stream_silu_mul(const Tensor& gate, const Tensor& up, const QuantizedWeight& W, const Tensor& bias,
                              Tensor& C, cudaStream_t stream) {
  constexpr QuantFormat F = QuantFormat::fp8_e4m3;  // dispatch_stream's one-row FP8 kernel
  switch (W.group_size / kUnitK) {
    case 1: return launch_stream<F, 1, 8, TA, true, kStages, true>(gate, W, bias, C, stream, up.data_ptr());
    case 2: return launch_stream<F, 2, 8, TA, true, kStages, true>(gate, W, bias, C, stream, up.data_ptr());
    case 4: return launch_stream<F, 4, 8, TA, true, kStages, true>(gate, W, bias, C, stream, up.data_ptr());
    default: return launch_stream<F, 8, 8, TA, true, kStages, true>(gate, W, bias, C, stream, up.data_ptr());
  }
}

}  // namespace

void set_stream_round_stages(int stages) { forced_round_stages = stages; }

bool gemm_q_stream_silu_mul(const Tensor& gate, const Tensor& up, const QuantizedWeight& W, const Tensor& bias,
                            Tensor& C, cudaStream_t stream) {
  // One row of FP8, rows of whole 16-byte pieces for the A copies. H200, Llama-3.1-8B batch 1:
  // FP8 360.12 / 361.12 tok/s against 349.93 / 350.99 with silu_mul's launch; FP4 452.45 / 450.62
  // against 453.48 / 451.48, so FP4 keeps the launch: its kernel keeps one stage in flight, and a
  // stage's SwiGLU (two silu a lane, the division and exp at full precision, computed again by
  // each of the 64 slabs' warps) is about a sixth more instructions on its critical path. INT2's
  // one row takes the one-row kernel, whose A path has no second row.
  if (gate.size(0) != 1 || W.format != QuantFormat::fp8_e4m3 || reinterpret_cast<uintptr_t>(gate.data_ptr()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(up.data_ptr()) % 16 != 0)
    return false;
  MARLIN_DISPATCH_FLOAT16(gate.dtype(), TA, "gemm_q", { dispatch_stream_silu_mul<TA>(gate, up, W, bias, C, stream); });
  return true;
}

void gemm_q_stream(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                   cudaStream_t stream) {
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
    switch (W.format) {
      case QuantFormat::fp4_e2m1: dispatch_stream<QuantFormat::fp4_e2m1, TA>(A, W, bias, C, stream); break;
      case QuantFormat::fp8_e4m3: dispatch_stream<QuantFormat::fp8_e4m3, TA>(A, W, bias, C, stream); break;
      case QuantFormat::int2: dispatch_stream<QuantFormat::int2, TA>(A, W, bias, C, stream); break;
    }
  });
}

void append_gemm_stream_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_stream_fp4_m8", reinterpret_cast<const void*>(&gemm_q_stream_kernel<QuantFormat::fp4_e2m1, 4, 8, __half, true, kStages>)});
  out.push_back({"gemm_stream_fp8_m8", reinterpret_cast<const void*>(&gemm_q_stream_kernel<QuantFormat::fp8_e4m3, 4, 8, __half, true, kStages>)});
  out.push_back({"gemm_stream_int2_m8", reinterpret_cast<const void*>(&gemm_q_stream_kernel<QuantFormat::int2, 4, 8, __half, true, kStages>)});
}

}  // namespace marlin::cuda
