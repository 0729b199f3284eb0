// One-token MoE experts on the tensor cores, over the canonical layout (DESIGN.md) that the
// experts keep (no tile-layout copy: the GLM-4.7-Flash experts are most of the model's bytes).
//
// A warp task is one 64-column tile of a matrix (gate and up together, or down) over one scale
// span of K (min(group, 128) rows): lane (g, c) loads, for its 8 adjacent columns 8g..8g+7, the
// packed words of rows k0 + 8c .. k0 + 8c + 7 of every 32-row unit (two 16-byte loads per unit
// for FP4/INT2, four for FP8), so a warp reads 1 KB of FP4 per unit, fully coalesced, with no
// repacking. The mma runs with swapped operands: the weights are A (16 columns x 16 k: columns
// 8g + 2t and 8g + 2t + 1 of lane g) and the token is column 0 of B. Inside a unit the mma's k
// order is permuted (k = 8c + 2 step + h + 4e, the same for weights and activations), so that a
// register pair is nibbles (u, u + 4) of one word: a few shifts and masks, no conversions.
// The span's f32 sums are scaled once, summed over the block's warps in shared memory, and over
// the K-split blocks by the last block to arrive (fixed order: deterministic).
#include <algorithm>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/moe_common.cuh"
#include "kernels/cuda/moe_kernels_cuda.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using namespace moe_detail;
using tile::kBf16Prescale;
using tile::mma_16816;

// A block covers one 64-column tile of one slot over all of K (a GLM-4.7-Flash gate/up tile is
// 16 spans: one per warp), so no K split crosses blocks: one memory latency for the ids, one
// for the weights, scales and x together.
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
// The down kernel's blocks are half as wide, so two fit an SM (108 registers a thread): a
// GLM-4.7-Flash token's 32 column tiles x 5 slots then run in one wave on 132 SMs, where blocks
// of 16 warps (one an SM) left 28 for a second wave. Its K (1536) is 12 spans: a warp takes two.
constexpr int kDownWarps = 8;
constexpr int kTileN = 64;
constexpr int kMaxSpanUnits = 4;  // a task covers at most 128 rows of K
constexpr int kUnitK = 32;

// The canonical layout seen by one lane of a 32-row unit: packed rows per unit, the row of the
// lane's first word, the words per column it loads, and the decode of register pair u (values
// k = 8c + u and 8c + u + 4) into an f16x2 of the value times 1 / kScale.
template <QuantFormat F>
struct Canon;

template <>
struct Canon<QuantFormat::fp4_e2m1> {
  static constexpr int kRowsPerUnit = 4, kWords = 1;
  static constexpr float kScale = 16384.0f;  // the placed bits are the value times 2^-14
  __device__ static int row(int c) { return c; }
  __device__ static uint32_t prepare(uint32_t q, int) { return q; }
  // Nibble u (bits 4u..4u+3) to the low half, nibble u + 4 to the high half: sign to bit 15/31,
  // magnitude (e1 e0 m) to bits 11..9 / 27..25.
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t q = w[0];
    constexpr int mag = 9 - 4 * U, sign = 12 - 4 * U;
    const uint32_t m = mag >= 0 ? q << mag : q >> -mag;
    return ((q << sign) & 0x80008000u) | (m & 0x0e000e00u);
  }
};

template <>
struct Canon<QuantFormat::fp8_e4m3> {
  static constexpr int kRowsPerUnit = 8, kWords = 2;
  static constexpr float kScale = 1.0f;  // hardware conversion: exact values
  __device__ static int row(int c) { return 2 * c; }
  __device__ static uint32_t prepare(uint32_t q, int) { return q; }
  // Byte u of the row-2c word (k = 8c + u) and of the row-2c+1 word (k = 8c + u + 4).
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t two = __byte_perm(w[0], w[1], U | ((U + 4) << 4));
    uint32_t out;
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}" : "=r"(out) : "r"(two));
    return out;
  }
};

template <>
struct Canon<QuantFormat::int2> {
  static constexpr int kRowsPerUnit = 2, kWords = 1;
  static constexpr float kScale = 2.0f;  // 2 (c - 1.5) is decoded
  __device__ static int row(int c) { return c / 2; }
  // Lanes c = 2, 3 (odd halves of the word) take its upper 16 bits.
  __device__ static uint32_t prepare(uint32_t q, int c) { return q >> (16 * (c % 2)); }
  // Codes u and u + 4 (bits 2u, 2u + 8) as 2c + 1 in the mantissa of 256 (ulp 1/4):
  // 256 + (2c + 1) / 4 - 257 = (c - 1.5) / 2, exact.
  template <int U>
  __device__ static uint32_t pair(const uint32_t* w) {
    const uint32_t t = (((w[0] >> (2 * U)) << 1) & 0x0606u) | 0x0101u;
    const uint32_t h = __byte_perm(t, 0x5c5c5c5cu, 0x5140);  // bytes: t0, 0x5c, t1, 0x5c
    const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&h), __float2half2_rn(257.0f));
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

// One warp task, a scale span: acc[m][j] += (x[k0 .. k0 + units * 32) . column 8g + j of matrix
// m) * its scale, in lanes (g, 0); the others add zeros. The batch's loads (weights, x where the
// lane holds the token, the scales) are all issued before its first mma; the matrices are then
// summed one after the other, so only one's accumulators are live.
template <QuantFormat F, int NMAT, typename TA>
__device__ __forceinline__ void task_accumulate(const MoeMatrix (&W)[NMAT], const TA* __restrict__ x, int k0,
                                                int units, int col0, float (&acc)[NMAT][8]) {
  using Cd = Canon<F>;
  constexpr int kWordsPerUnit = 8 * Cd::kWords;
  constexpr int kBatch = kMaxSpanUnits / Cd::kWords;  // 64 words per lane and matrix in flight
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
      xv[b] = g == 0 && u0 + b < units ? *reinterpret_cast<const uint4*>(x + k0 + (u0 + b) * kUnitK + 8 * c)
                                       : make_uint4(0, 0, 0, 0);
    uint32_t w[NMAT][kBatch][kWordsPerUnit];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int r = 0; r < Cd::kWords; ++r) {
          const int u = u0 + b;
          const int64_t prow = static_cast<int64_t>(k0 / kUnitK + u) * Cd::kRowsPerUnit + Cd::row(c) + r;
          const uint32_t* src = W[m].packed + prow * W[m].N + col;
          const bool in = u < units && col < W[m].N;  // N % 8 == 0: all 8 columns or none
          const uint4 lo = in ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
          const uint4 hi = in ? __ldg(reinterpret_cast<const uint4*>(src + 4)) : make_uint4(0, 0, 0, 0);
          // Word of column 8g + j, row r: w[...][j * kWords + r].
          const uint32_t v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
          for (int j = 0; j < 8; ++j) w[m][b][j * Cd::kWords + r] = v[j];
        }
#pragma unroll
    for (int m = 0; m < NMAT; ++m) {
      float sums[4][4] = {};
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (u0 + b >= units) break;
        // B: the token is column 0, held by lanes g == 0; pairs (x[8c + p], x[8c + p + 4]).
        const uint4 xh = tile::activations_as_f16<TA>(xv[b]);
        const uint32_t xp[4] = {__byte_perm(xh.x, xh.z, 0x5410), __byte_perm(xh.x, xh.z, 0x7632),
                                __byte_perm(xh.y, xh.w, 0x5410), __byte_perm(xh.y, xh.w, 0x7632)};
        uint32_t q[kWordsPerUnit];
#pragma unroll
        for (int j = 0; j < kWordsPerUnit; ++j) q[j] = Cd::prepare(w[m][b][j], c);
#pragma unroll
        for (int step = 0; step < 2; ++step)
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            // Rows g and g + 8 of A: columns 8g + 2t and 8g + 2t + 1.
            const uint32_t* lo = q + (2 * t) * Cd::kWords;
            const uint32_t* hi = q + (2 * t + 1) * Cd::kWords;
            uint32_t a[4];
            if (step == 0) {
              a[0] = Cd::template pair<0>(lo);
              a[1] = Cd::template pair<0>(hi);
              a[2] = Cd::template pair<1>(lo);
              a[3] = Cd::template pair<1>(hi);
            } else {
              a[0] = Cd::template pair<2>(lo);
              a[1] = Cd::template pair<2>(hi);
              a[2] = Cd::template pair<3>(lo);
              a[3] = Cd::template pair<3>(hi);
            }
            mma_16816(sums[t], a, xp[2 * step], xp[2 * step + 1]);
          }
      }
      // Lane (g, 0) holds token 0 of columns 8g + 2t (i = 0) and 8g + 2t + 1 (i = 2).
      const __half* sc = reinterpret_cast<const __half*>(&scale_words[m]);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        acc[m][2 * t] = fmaf(sums[t][0], __half2float(sc[2 * t]), acc[m][2 * t]);
        acc[m][2 * t + 1] = fmaf(sums[t][2], __half2float(sc[2 * t + 1]), acc[m][2 * t + 1]);
      }
    }
  }
}

template <typename TA>
constexpr float activation_unscale() {
  return std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
}

// The block's sums of NMAT matrices over all of K for columns col0..col0+63: each warp's spans
// (warp w of the block's kW takes spans w, w + kW, ...), scaled, then summed over the warps in
// order into red[NMAT][64].
template <QuantFormat F, int NMAT, typename TA, int kW>
__device__ void block_sums(const MoeMatrix (&W)[NMAT], const TA* __restrict__ x, int col0, float* red) {
  using Cd = Canon<F>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int K = W[0].K, span_k = min(W[0].group_size, kMaxSpanUnits * kUnitK);
  float acc[NMAT][8] = {};
  for (int k0 = warp * span_k; k0 < K; k0 += kW * span_k)
    task_accumulate<F, NMAT, TA>(W, x, k0, min(span_k, K - k0) / kUnitK, col0, acc);
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
  __shared__ float red[2 * kTileN];
  const int t = blockIdx.z / slots, slot = blockIdx.z % slots;
  const int expert = slot < top_k ? ids[t * top_k + slot] : num_experts;
  const MoeMatrix W[2] = {table[expert].gate, table[expert].up};
  const int N = W[0].N, col0 = blockIdx.x * kTileN;
  if (col0 >= N) return;  // this expert is narrower than the widest one
  dispatch_format(W[0].bits, [&](auto tag) {
    block_sums<decltype(tag)::value, 2, TA, kWarps>(W, x + static_cast<int64_t>(t) * H, col0, red);
  });
  for (int i = threadIdx.x; i < kTileN; i += kThreads)
    if (col0 + i < N) act[static_cast<int64_t>(blockIdx.z) * Imax + col0 + i] = swiglu<TA>(red[i], red[kTileN + i]);
}

// grid (column tiles of H, 1, T x slots). partials [T x slots][H], each token's summed over its
// slots in order by the last of its blocks for that column tile.
template <typename TA, int kW>
__global__ void __launch_bounds__(kW * 32, kW == kDownWarps ? 2 : 1)
    moe_mma_down_kernel(const TA* __restrict__ act, const int32_t* __restrict__ ids,
                        const float* __restrict__ weights, const MoeExpertMatrices* __restrict__ table,
                        int num_experts, int top_k, int slots, int H, int Imax, float* __restrict__ partials,
                        unsigned* __restrict__ counters, TA* __restrict__ out) {
  __shared__ float red[2 * kTileN];
  const int t = blockIdx.z / slots, slot = blockIdx.z % slots;
  const int expert = slot < top_k ? ids[t * top_k + slot] : num_experts;
  const float weight = slot < top_k ? weights[t * top_k + slot] : 1.0f;
  const MoeMatrix W[1] = {table[expert].down};
  const int col0 = blockIdx.x * kTileN;
  dispatch_format(W[0].bits, [&](auto tag) {
    block_sums<decltype(tag)::value, 1, TA, kW>(W, act + static_cast<int64_t>(blockIdx.z) * Imax, col0, red);
  });
  for (int i = threadIdx.x; i < kTileN; i += kW * 32)
    if (col0 + i < H) partials[static_cast<int64_t>(blockIdx.z) * H + col0 + i] = red[i] * weight;
  if (!arrive_last(&counters[static_cast<int64_t>(t) * gridDim.x + blockIdx.x], slots)) return;
  const float* token_parts = partials + static_cast<int64_t>(t) * slots * H;
  for (int i = threadIdx.x; i < kTileN; i += kW * 32) {
    const int col = col0 + i;
    if (col >= H) continue;
    float v = 0.0f;
    for (int p = 0; p < slots; ++p) v += __ldcg(token_parts + static_cast<int64_t>(p) * H + col);
    out[static_cast<int64_t>(t) * H + col] = from_float<TA>(v);
  }
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
  const DecodeScratch s = decode_scratch(device, max_rows * H, static_cast<int64_t>(kMoeDecodeMaxTokens) * tiles_h,
                                         max_rows * Imax * static_cast<int64_t>(sizeof(TA)));
  const auto* table = static_cast<const MoeExpertMatrices*>(plan.table.data_ptr());
  TA* act = static_cast<TA*>(s.act);
  moe_mma_gate_up_kernel<TA><<<dim3(tiles_i, 1, static_cast<unsigned>(rows)), kThreads, 0, stream>>>(
      static_cast<const TA*>(x.data_ptr()), ids.data<int32_t>(), table, E, k, slots, H, Imax, act);
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_decode");
  // MARLIN_MOE_DOWN_WARPS=16: the down kernel in blocks of 16 warps, to measure against.
  static const bool wide_down = env_int("MARLIN_MOE_DOWN_WARPS", kDownWarps) == kWarps;
  auto* down = wide_down ? moe_mma_down_kernel<TA, kWarps> : moe_mma_down_kernel<TA, kDownWarps>;
  down<<<dim3(tiles_h, 1, static_cast<unsigned>(rows)), (wide_down ? kWarps : kDownWarps) * 32, 0, stream>>>(
      act, ids.data<int32_t>(), weights.data<float>(), table, E, k, slots, H, Imax, s.partials, s.counters,
      static_cast<TA*>(out.data_ptr()));
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_decode");
}

template void launch_decode_mma<__half>(const Tensor&, const Tensor&, const Tensor&, const MoeKernelPlan&,
                                        const Tensor&, cudaStream_t);
template void launch_decode_mma<__nv_bfloat16>(const Tensor&, const Tensor&, const Tensor&,
                                               const MoeKernelPlan&, const Tensor&, cudaStream_t);

}  // namespace marlin::cuda
