// One-token MoE experts on the tensor cores, over the canonical layout (DESIGN.md) that the
// experts keep (no tile-layout copy: the GLM-4.7-Flash experts are most of the model's bytes).
//
// A warp task is one 64-column tile of a matrix (gate and up together, or down) over one scale
// span of K (min(group, 128) rows), loaded and multiplied as moe_canon.cuh describes, the token
// being column 0 of B. The span's f32 sums are scaled once, summed over the block's warps in
// shared memory, and over the K-split blocks by the last block to arrive (fixed order:
// deterministic).
#include <algorithm>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/moe_canon.cuh"
#include "kernels/cuda/moe_kernels_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using namespace moe_detail;
using namespace moe_canon;

// A block covers one 64-column tile of one slot over all of K (a GLM-4.7-Flash gate/up tile is
// 16 spans: one per warp), so no K split crosses blocks: one memory latency for the ids, one
// for the weights, scales and x together.
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
// The down kernel's blocks are half as wide, so two fit an SM (108 registers a thread): a
// GLM-4.7-Flash token's 32 column tiles x 5 slots then run in one wave on 132 SMs, where blocks
// of 16 warps (one an SM) left 28 for a second wave. Its K (1536) is 12 spans: a warp takes two.
constexpr int kDownWarps = 8;
// Or, where a second span would wait for the first, K cut into parts of at most kDownPartSpans
// spans, a block of that many warps each (three an SM): GLM-4.7-Flash's 12 spans as 2 parts of
// 6, so every warp loads one span and no warp waits for a second. MARLIN_MOE_DOWN_KSPLIT=0: the
// 8-warp blocks over all of K.
constexpr int kDownPartSpans = 6, kMaxDownParts = 4;
// One warp task, a scale span: acc[m][j] += (x[k0 .. k0 + units * 32) . column 8g + j of matrix
// m) * its scale, in lanes (g, 0); the others add zeros. The batch's loads (weights, x where the
// lane holds the token, the scales) are all issued before its first mma; the matrices are then
// summed one after the other, so only one's accumulators are live. FP8's tasks; FP4's and
// INT2's take task_accumulate_rolled below.
template <QuantFormat F, int NMAT, typename TA, bool kDependent>
__device__ __forceinline__ void task_accumulate(const MoeMatrix (&W)[NMAT], const TA* __restrict__ x, int k0,
                                                int units, int col0, float (&acc)[NMAT][8]) {
  using Cd = Canon<F>;
  constexpr int kWordsPerUnit = 8 * Cd::kWords;
  constexpr int kBatch = kMaxSpanUnits / Cd::kWords;  // 32 words a lane and matrix in flight
  if constexpr (kDependent) pdl_wait();  // x: the output of the kernel before (task_accumulate_rolled)
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int col = col0 + 8 * g;
#pragma unroll
  for (int u0 = 0; u0 < kMaxSpanUnits; u0 += kBatch) {
    if (u0 >= units) break;
    uint4 scale_words[NMAT];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
      scale_words[m] = c == 0 && col < W[m].N
                           ? __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(W[m].scales) +
                                                                  static_cast<int64_t>(k0 / W[m].group_size) * W[m].N + col))
                           : make_uint4(0, 0, 0, 0);
    uint4 xv[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      xv[b] = g == 0 && u0 + b < units ? ld_dependent_v4(x + k0 + (u0 + b) * kUnitK + 8 * c) : make_uint4(0, 0, 0, 0);
    uint32_t w[NMAT][kBatch][kWordsPerUnit];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
      for (int b = 0; b < kBatch; ++b)  // N % 8 == 0: all 8 columns or none
        load_unit_words<F, true>(W[m], k0 / kUnitK + u0 + b, c, col, u0 + b < units && col < W[m].N, w[m][b]);
#pragma unroll
    for (int m = 0; m < NMAT; ++m) {
      float sums[1][4][4] = {};
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (u0 + b >= units) break;
        // B: the token is column 0, held by lanes g == 0.
        uint32_t xp[1][4];
        activation_pairs<TA>(xv[b], xp[0]);
        uint32_t q[kWordsPerUnit];
#pragma unroll
        for (int j = 0; j < kWordsPerUnit; ++j) q[j] = Cd::prepare(w[m][b][j], c);
        unit_mma<F, 1>(q, xp, sums);
      }
      // Lane (g, 0) holds token 0 of columns 8g + 2t (i = 0) and 8g + 2t + 1 (i = 2).
      const __half* sc = reinterpret_cast<const __half*>(&scale_words[m]);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        acc[m][2 * t] = fmaf(sums[0][t][0], __half2float(sc[2 * t]), acc[m][2 * t]);
        acc[m][2 * t + 1] = fmaf(sums[0][t][2], __half2float(sc[2 * t + 1]), acc[m][2 * t + 1]);
      }
    }
  }
}

// The same sums a unit at a time in a loop that is not unrolled, the next unit's loads in flight
// while one is multiplied: two units' code, not a span's (the FP4 path of task_accumulate is
// ~1,550 instructions, ~25 KB of code an SM fetches at every launch). Bit for bit
// task_accumulate's sums for FP4 and INT2 (one scaling a span). Measured against it (one binary,
// a switch; `bench moe --tokens 1`, GLM-4.7-Flash shapes): H200 FP4 21.7 / 21.8 against 24.4 /
// 24.4 µs, GLM-4.7-Flash FP4 b1 318.22 / 315.19 against 305.46 / 304.44 tok/s; H100 FP4 22.7
// against 26.3 µs, INT2 24.8 against 25.7, FP8 31.2 against 30.2 (FP8 keeps task_accumulate).
template <QuantFormat F, int NMAT, typename TA, bool kDependent>
__device__ __forceinline__ void task_accumulate_rolled(const MoeMatrix (&W)[NMAT], const TA* __restrict__ x, int k0,
                                                       int units, int col0, float (&acc)[NMAT][8]) {
  using Cd = Canon<F>;
  constexpr int kWordsPerUnit = 8 * Cd::kWords;
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int col = col0 + 8 * g;
  uint4 scale_words[NMAT];
#pragma unroll
  for (int m = 0; m < NMAT; ++m)
    scale_words[m] = c == 0 && col < W[m].N
                         ? __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(W[m].scales) +
                                                                static_cast<int64_t>(k0 / W[m].group_size) * W[m].N + col))
                         : make_uint4(0, 0, 0, 0);
  float sums[NMAT][1][4][4] = {};
  auto load_weights = [&](int u, uint32_t (&w)[NMAT][kWordsPerUnit]) {
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
      load_unit_words<F, true>(W[m], k0 / kUnitK + u, c, col, u < units && col < W[m].N, w[m]);
  };
  auto load_x = [&](int u) {
    return g == 0 && u < units ? ld_dependent_v4(x + k0 + u * kUnitK + 8 * c) : make_uint4(0, 0, 0, 0);
  };
  auto load = [&](int u, uint32_t (&w)[NMAT][kWordsPerUnit], uint4& xv) {
    load_weights(u, w);
    xv = load_x(u);
  };
  auto multiply = [&](const uint32_t (&w)[NMAT][kWordsPerUnit], uint4 xv) {
    uint32_t xp[1][4];
    activation_pairs<TA>(xv, xp[0]);
#pragma unroll
    for (int m = 0; m < NMAT; ++m) {
      uint32_t q[kWordsPerUnit];
#pragma unroll
      for (int j = 0; j < kWordsPerUnit; ++j) q[j] = Cd::prepare(w[m][j], c);
      unit_mma<F, 1>(q, xp, sums[m]);
    }
  };
  uint32_t wa[NMAT][kWordsPerUnit], wb[NMAT][kWordsPerUnit];
  // The first unit's weights before x: the down kernel, a programmatic dependent of the gate/up
  // kernel, requests them before waiting for x (pdl.cuh; the wait is a no-op in a plain launch).
  uint4 xa, xb;
  if constexpr (kDependent) {
    load_weights(0, wa);
    pdl_wait();
    xa = load_x(0);
  } else {
    load(0, wa, xa);
  }
#pragma unroll 1
  for (int u = 0; u < units; u += 2) {
    load(u + 1, wb, xb);
    multiply(wa, xa);
    if (u + 1 >= units) break;
    load(u + 2, wa, xa);
    multiply(wb, xb);
  }
#pragma unroll
  for (int m = 0; m < NMAT; ++m) {
    const __half* sc = reinterpret_cast<const __half*>(&scale_words[m]);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      acc[m][2 * t] = fmaf(sums[m][0][t][0], __half2float(sc[2 * t]), acc[m][2 * t]);
      acc[m][2 * t + 1] = fmaf(sums[m][0][t][2], __half2float(sc[2 * t + 1]), acc[m][2 * t + 1]);
    }
  }
}

// The span of K a warp task covers (rows; a whole number of units, at most one scale group).
__device__ __forceinline__ int span_rows(const MoeMatrix& W) { return min(W.group_size, kMaxSpanUnits * kUnitK); }

// The block's sums of NMAT matrices over rows [k_begin, k_end) of K for columns col0..col0+63:
// each warp's spans (warp w of the block's kW takes spans w, w + kW, ... of the range), scaled,
// then summed over the warps in order into red[NMAT][64]. kDependent: x is written by the kernel
// this one may overlap (pdl.cuh), waited for after the first weights are requested.
template <QuantFormat F, int NMAT, typename TA, int kW, bool kDependent>
__device__ void block_sums(const MoeMatrix (&W)[NMAT], const TA* __restrict__ x, int col0, float* red,
                           int k_begin, int k_end) {
  using Cd = Canon<F>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int span_k = span_rows(W[0]);
  float acc[NMAT][8] = {};
  for (int k0 = k_begin + warp * span_k; k0 < k_end; k0 += kW * span_k)
    if constexpr (F != QuantFormat::fp8_e4m3)
      task_accumulate_rolled<F, NMAT, TA, kDependent>(W, x, k0, min(span_k, k_end - k0) / kUnitK, col0, acc);
    else
      task_accumulate<F, NMAT, TA, kDependent>(W, x, k0, min(span_k, k_end - k0) / kUnitK, col0, acc);
  __shared__ float per_warp[kW][2][kTileN];
  if (c == 0)
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
      for (int j = 0; j < 8; ++j) per_warp[warp][m][8 * g + j] = acc[m][j] * Cd::kScale * activation_unscale<TA>();
  __syncthreads();
  for (int i = threadIdx.x; i < NMAT * kTileN; i += kW * 32) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kW; ++w) v += per_warp[w][i / kTileN][i % kTileN];
    red[i] = v;
  }
  __syncthreads();
}

// Tokens t = 0 .. T - 1, each with `slots` slots (its top_k experts, then the shared experts):
// blockIdx.z = t slots + slot, the slot's row of act and of the partials. Every token is
// computed as it would be alone (its experts' weights read once per token that chose them).

// grid (column tiles of I, 1, T x slots): act [T x slots, Imax] = SwiGLU(x gate, x up).
template <typename TA>
__global__ void __launch_bounds__(kThreads, 1)
    moe_mma_gate_up_kernel(const TA* __restrict__ x, const int32_t* __restrict__ ids,
                           const MoeExpertMatrices* __restrict__ table, int num_experts, int top_k,
                           int slots, int H, int Imax, TA* __restrict__ act) {
  TRACE_START
  // A programmatic dependent of the router (pdl.cuh): nothing read before the wait, the ids and
  // x (where the router wrote it with the residual norm) being its output.
  pdl_wait();
  TRACE_WAITED
  // The down kernel's blocks may start on the SMs left free. After the wait, not before: the
  // down kernel reads the router's ids and weights before its own wait, which orders only this
  // grid's end, so they must be final when it starts.
  pdl_launch_dependents();
  __shared__ float red[2 * kTileN];
  const int t = blockIdx.z / slots, slot = blockIdx.z % slots;
  const int expert = slot < top_k ? ld_dependent_s32(ids + t * top_k + slot) : num_experts;
  const MoeMatrix W[2] = {table[expert].gate, table[expert].up};
  const int N = W[0].N, col0 = blockIdx.x * kTileN;
  if (col0 >= N) return;  // this expert is narrower than the widest one
  dispatch_format(W[0].bits, [&](auto tag) {
    block_sums<decltype(tag)::value, 2, TA, kWarps, false>(W, x + static_cast<int64_t>(t) * H, col0, red, 0, W[0].K);
  });
  for (int i = threadIdx.x; i < kTileN; i += kThreads)
    if (col0 + i < N) act[static_cast<int64_t>(blockIdx.z) * Imax + col0 + i] = swiglu<TA>(red[i], red[kTileN + i]);
  TRACE_END(moe_up)
}

// grid (column tiles of H, K parts, T x slots). partials [T x slots x K parts][H], each token's
// summed over its slots and parts in order by the last of its blocks for that column tile.
template <typename TA, int kW>
__global__ void __launch_bounds__(kW * 32, kW == kDownWarps ? 2 : kW == kDownPartSpans ? 3 : 1)
    moe_mma_down_kernel(const TA* __restrict__ act, const int32_t* __restrict__ ids,
                        const float* __restrict__ weights, const MoeExpertMatrices* __restrict__ table,
                        int num_experts, int top_k, int slots, int H, int Imax, float* __restrict__ partials,
                        unsigned* __restrict__ counters, TA* __restrict__ out) {
  TRACE_START
  TRACE_WAITED
  __shared__ float red[2 * kTileN];
  const int t = blockIdx.z / slots, slot = blockIdx.z % slots;
  // A programmatic dependent of the gate/up kernel: the routing, the table entry and the first
  // unit's weights are read before the wait (in task_accumulate*), the activations after. The
  // router has ended when this grid starts (the gate/up kernel triggers after its own wait).
  const int expert = slot < top_k ? __ldcg(ids + t * top_k + slot) : num_experts;
  const float weight = slot < top_k ? __ldcg(weights + t * top_k + slot) : 1.0f;
  const MoeMatrix W[1] = {table[expert].down};
  const int col0 = blockIdx.x * kTileN, parts = gridDim.y;
  // Part p of K: spans [p n, (p + 1) n) of the matrix's, n = ceil(spans / parts).
  const int span_k = span_rows(W[0]);
  const int part_k = (W[0].K + span_k * parts - 1) / (span_k * parts) * span_k;
  const int k_begin = blockIdx.y * part_k, k_end = min(W[0].K, k_begin + part_k);
  dispatch_format(W[0].bits, [&](auto tag) {
    block_sums<decltype(tag)::value, 1, TA, kW, true>(W, act + static_cast<int64_t>(blockIdx.z) * Imax, col0, red, k_begin,
                                                k_end);
  });
  pdl_wait();  // for warps without a task: the partials and out come after the gate/up kernel
  const int64_t part_row = static_cast<int64_t>(blockIdx.z) * parts + blockIdx.y;
  for (int i = threadIdx.x; i < kTileN; i += kW * 32)
    if (col0 + i < H) partials[part_row * H + col0 + i] = red[i] * weight;
  if (!arrive_last(&counters[static_cast<int64_t>(t) * gridDim.x + blockIdx.x], slots * parts)) {
    TRACE_END(moe_down)
    return;
  }
  const float* token_parts = partials + static_cast<int64_t>(t) * slots * parts * H;
  for (int i = threadIdx.x; i < kTileN; i += kW * 32) {
    const int col = col0 + i;
    if (col >= H) continue;
    float v = 0.0f;
    for (int p = 0; p < slots * parts; ++p) v += __ldcg(token_parts + static_cast<int64_t>(p) * H + col);
    out[static_cast<int64_t>(t) * H + col] = from_float<TA>(v);
  }
  TRACE_END(moe_down)
}

}  // namespace

template <typename TA>
void launch_decode_mma(const Tensor& x, const Tensor& ids, const Tensor& weights,
                       const MoeKernelPlan& plan, const Tensor& out, cudaStream_t stream) {
  const int device = x.device().index;
  const int H = plan.hidden, Imax = plan.max_intermediate, E = plan.num_experts;
  const int T = static_cast<int>(x.size(0)), k = static_cast<int>(ids.size(1));
  const int slots = k + (plan.has_shared ? 1 : 0);
  const int tiles_i = (Imax + kTileN - 1) / kTileN, tiles_h = (H + kTileN - 1) / kTileN;
  const int64_t rows = static_cast<int64_t>(T) * slots;
  // Sized for the most tokens, whatever T: a buffer grown later would be freed under a CUDA
  // graph captured with the smaller one.
  const int64_t max_rows = static_cast<int64_t>(kMoeDecodeMaxTokens) * slots;
  // The down kernel's K parts (kDownPartSpans), where one token's blocks fit one wave of three
  // an SM. Counted in spans of 128 rows (group 128 and up; a smaller group gives a warp several
  // spans, still correct: each block cuts its own matrix's K). Whatever T, so that a token's sums
  // are those of a decode call of its own.
  static const bool k_split = !env_is("MARLIN_MOE_DOWN_KSPLIT", "0");
  const int spans = (Imax + kMaxSpanUnits * kUnitK - 1) / (kMaxSpanUnits * kUnitK);
  int parts = 1;
  if (k_split && spans > kDownPartSpans) {
    // At most kMaxDownParts: the scratch below holds that many partial rows a slot.
    const int want = std::min((spans + kDownPartSpans - 1) / kDownPartSpans, kMaxDownParts);
    if (static_cast<int64_t>(tiles_h) * slots * want <= 3 * static_cast<int64_t>(multiprocessor_count(device)))
      parts = want;
  }
  const DecodeScratch s = decode_scratch(device, max_rows * H * kMaxDownParts,
                                         static_cast<int64_t>(kMoeDecodeMaxTokens) * tiles_h,
                                         max_rows * Imax * static_cast<int64_t>(sizeof(TA)));
  const auto* table = static_cast<const MoeExpertMatrices*>(plan.table.data_ptr());
  TA* act = static_cast<TA*>(s.act);
  // The gate/up kernel is a programmatic dependent of the router (which triggers at its start),
  // the down kernel of the gate/up kernel (pdl.cuh), each waiting in its blocks, already on the
  // SMs, for the one before to end. MARLIN_MOE_DECODE_PDL=0 launches them plainly, to measure
  // against: H200, `bench moe --tokens 1` 21.0 / 21.0 against 22.5 / 22.5 µs, GLM-4.7-Flash FP4
  // b1 324.67 / 324.89 against 315.71 / 315.56 tok/s (docs/PERFORMANCE.md, twenty-third session).
  // The down kernel does not trigger its own dependents early: the next layer's norm starting at
  // once measured no faster (325.77 / 322.86 tok/s).
  // The sixteenth session measured both as dependents slower (GLM-4.7-Flash 264.31 / 261.31
  // against 265.78 / 266.02 tok/s), its down kernel then waiting at its first instruction.
  static const bool decode_pdl = !env_is("MARLIN_MOE_DECODE_PDL", "0");
  const bool pdl = decode_pdl && pdl_enabled(device);
  MARLIN_CUDA_CHECK(launch_maybe_pdl(pdl, moe_mma_gate_up_kernel<TA>, dim3(tiles_i, 1, static_cast<unsigned>(rows)),
                                     dim3(kThreads), 0, stream, static_cast<const TA*>(x.data_ptr()),
                                     ids.data<int32_t>(), table, E, k, slots, H, Imax, act),
                    "dispatch_moe_decode");
  // MARLIN_MOE_DOWN_WARPS=16: the down kernel in blocks of 16 warps, to measure against.
  static const bool wide_down = env_int("MARLIN_MOE_DOWN_WARPS", kDownWarps) == kWarps;
  auto* down = parts > 1   ? moe_mma_down_kernel<TA, kDownPartSpans>
               : wide_down ? moe_mma_down_kernel<TA, kWarps>
                           : moe_mma_down_kernel<TA, kDownWarps>;
  const int down_warps = parts > 1 ? kDownPartSpans : wide_down ? kWarps : kDownWarps;
  MARLIN_CUDA_CHECK(launch_maybe_pdl(pdl, down, dim3(tiles_h, parts, static_cast<unsigned>(rows)),
                                     dim3(down_warps * 32), 0, stream, static_cast<const TA*>(act),
                                     ids.data<int32_t>(), weights.data<float>(), table, E, k, slots, H, Imax,
                                     s.partials, s.counters, static_cast<TA*>(out.data_ptr())),
                    "dispatch_moe_decode");
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_decode");
}

template void launch_decode_mma<__half>(const Tensor&, const Tensor&, const Tensor&, const MoeKernelPlan&,
                                        const Tensor&, cudaStream_t);
template void launch_decode_mma<__nv_bfloat16>(const Tensor&, const Tensor&, const Tensor&,
                                               const MoeKernelPlan&, const Tensor&, cudaStream_t);

}  // namespace marlin::cuda
