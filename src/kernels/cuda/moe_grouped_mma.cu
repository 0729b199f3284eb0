// A prompt's MoE experts on the tensor cores (dispatch_moe_optimized past kMoeDecodeMaxTokens
// tokens): the row tiles of moe_grouped.cu's grouping, kMmaTileRows (token, slot) rows of one
// expert each, run against the expert's canonical-layout weights as moe_canon.cuh lays them out,
// the tile's rows being the columns of B (8 a group), so each weight fragment loaded and decoded
// feeds kMmaTileRows / 8 mmas. A block is one tile x 64 columns over all of K: its 4 warps take
// the scale spans in turn and sum their f32 partials in shared memory in a fixed order.
#include "core/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/moe_canon.cuh"
#include "kernels/cuda/moe_kernels_cuda.h"

namespace marlin::cuda {
namespace {

using namespace moe_detail;
using namespace moe_canon;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kGroups = kMmaTileRows / 8;  // B column groups of a tile
constexpr int kRedStride = kTileN + 1;     // odd: the lanes' scattered stores spread over banks

// One 16-byte load of lane's 8 activations of a unit, zeros past the tile's rows.
template <typename TA>
__device__ __forceinline__ uint4 load_x(const TA* row, int k) {
  return row != nullptr ? *reinterpret_cast<const uint4*>(row + k) : make_uint4(0, 0, 0, 0);
}

// The tile's sums of NMAT matrices over all of K for columns col0..col0+63 and its rows: rows[n]
// is the activation row of this lane's token 8n + g (nullptr past the tile). Leaves
// red[m][row][col] (stride kRedStride) summed over the warps.
template <QuantFormat F, int NMAT, typename TA>
__device__ void tile_sums(const MoeMatrix (&W)[NMAT], const TA* const (&rows)[kGroups], int col0, float* red) {
  using Cd = Canon<F>;
  constexpr int kWordsPerUnit = 8 * Cd::kWords;
  constexpr int kBatch = 2 / Cd::kWords;  // units in flight: 16 words per lane and matrix
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int col = col0 + 8 * g;
  const int K = W[0].K, span_k = min(W[0].group_size, kMaxSpanUnits * kUnitK);
  float acc[NMAT][kGroups][4][4] = {};
  for (int k0 = warp * span_k; k0 < K; k0 += kWarps * span_k) {
    const int units = min(span_k, K - k0) / kUnitK;
    uint4 scale_words[NMAT];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
      scale_words[m] = col < W[m].N
                           ? __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(W[m].scales) +
                                                                  static_cast<int64_t>(k0 / W[m].group_size) * W[m].N + col))
                           : make_uint4(0, 0, 0, 0);
    for (int u0 = 0; u0 < units; u0 += kBatch) {
      uint4 xv[kBatch][kGroups];
      uint32_t w[NMAT][kBatch][kWordsPerUnit];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const bool in = u0 + b < units;
#pragma unroll
        for (int n = 0; n < kGroups; ++n)
          xv[b][n] = load_x(in ? rows[n] : nullptr, k0 + (u0 + b) * kUnitK + 8 * c);
#pragma unroll
        for (int m = 0; m < NMAT; ++m)  // N % 8 == 0: all 8 columns or none
          load_unit_words<F, false>(W[m], k0 / kUnitK + u0 + b, c, col, in && col < W[m].N, w[m][b]);
      }
#pragma unroll
      for (int m = 0; m < NMAT; ++m) {
        float sums[kGroups][4][4] = {};
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          uint32_t xp[kGroups][4];
#pragma unroll
          for (int n = 0; n < kGroups; ++n) activation_pairs<TA>(xv[b][n], xp[n]);
          uint32_t q[kWordsPerUnit];
#pragma unroll
          for (int j = 0; j < kWordsPerUnit; ++j) q[j] = Cd::prepare(w[m][b][j], c);
          unit_mma<F, kGroups>(q, xp, sums);  // a unit past `units` adds zeros
        }
        const __half* sc = reinterpret_cast<const __half*>(&scale_words[m]);
#pragma unroll
        for (int n = 0; n < kGroups; ++n)
#pragma unroll
          for (int t = 0; t < 4; ++t)
#pragma unroll
            for (int i = 0; i < 4; ++i)
              acc[m][n][t][i] = fmaf(sums[n][t][i], __half2float(sc[2 * t + i / 2]), acc[m][n][t][i]);
      }
    }
  }
  // Warp w's partials to red + (w NMAT + m) plane; then plane m of warp 0 holds the sum.
  constexpr int kPlane = kMmaTileRows * kRedStride;
  const float unscale = Cd::kScale * activation_unscale<TA>();
#pragma unroll
  for (int m = 0; m < NMAT; ++m)
#pragma unroll
    for (int n = 0; n < kGroups; ++n)
#pragma unroll
      for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          red[(warp * NMAT + m) * kPlane + (8 * n + 2 * c + i % 2) * kRedStride + 8 * g + 2 * t + i / 2] =
              acc[m][n][t][i] * unscale;
  __syncthreads();
  for (int i = threadIdx.x; i < NMAT * kPlane; i += kThreads) {
    float v = red[i];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v += red[w * NMAT * kPlane + i];
    red[i] = v;
  }
  __syncthreads();
}

// grid (tiles, column tiles of Imax): act[row, :] = SwiGLU(x[token(row)] @ gate, @ up).
template <typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_grouped_mma_gate_up_kernel(const TA* __restrict__ x, int H, const int32_t* __restrict__ row_token,
                                   const RowTile* __restrict__ tiles, const MoeExpertMatrices* __restrict__ table,
                                   int Imax, TA* __restrict__ act) {
  __shared__ float red[kWarps * 2 * kMmaTileRows * kRedStride];
  const RowTile tile = tiles[blockIdx.x];
  if (tile.group < 0) return;
  const MoeMatrix W[2] = {table[tile.group].gate, table[tile.group].up};
  const int N = W[0].N, col0 = blockIdx.y * kTileN;
  if (col0 >= N) return;  // this expert is narrower than the widest one
  const int g = threadIdx.x % 32 / 4;
  const TA* rows[kGroups];
#pragma unroll
  for (int n = 0; n < kGroups; ++n) {
    const int row = tile.row_begin + 8 * n + g;
    rows[n] = row < tile.row_end ? x + static_cast<int64_t>(row_token[row]) * H : nullptr;
  }
  dispatch_format(W[0].bits, [&](auto tag) { tile_sums<decltype(tag)::value, 2, TA>(W, rows, col0, red); });
  constexpr int kPlane = kMmaTileRows * kRedStride;
  for (int i = threadIdx.x; i < kMmaTileRows * kTileN; i += kThreads) {
    const int r = i / kTileN, j = i % kTileN, row = tile.row_begin + r;
    if (row < tile.row_end && col0 + j < N)
      act[static_cast<int64_t>(row) * Imax + col0 + j] =
          swiglu<TA>(red[r * kRedStride + j], red[kPlane + r * kRedStride + j]);
  }
}

// grid (tiles, column tiles of H): y[row, :] = act[row, :I] @ down, rounded to TA.
template <typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_grouped_mma_down_kernel(const TA* __restrict__ act, int Imax, const RowTile* __restrict__ tiles,
                                const MoeExpertMatrices* __restrict__ table, int H, TA* __restrict__ y) {
  __shared__ float red[kWarps * kMmaTileRows * kRedStride];
  const RowTile tile = tiles[blockIdx.x];
  if (tile.group < 0) return;
  const MoeMatrix W[1] = {table[tile.group].down};
  const int col0 = blockIdx.y * kTileN;
  const int g = threadIdx.x % 32 / 4;
  const TA* rows[kGroups];
#pragma unroll
  for (int n = 0; n < kGroups; ++n) {
    const int row = tile.row_begin + 8 * n + g;
    rows[n] = row < tile.row_end ? act + static_cast<int64_t>(row) * Imax : nullptr;
  }
  dispatch_format(W[0].bits, [&](auto tag) { tile_sums<decltype(tag)::value, 1, TA>(W, rows, col0, red); });
  for (int i = threadIdx.x; i < kMmaTileRows * kTileN; i += kThreads) {
    const int r = i / kTileN, j = i % kTileN, row = tile.row_begin + r;
    if (row < tile.row_end && col0 + j < H)
      y[static_cast<int64_t>(row) * H + col0 + j] = from_float<TA>(red[r * kRedStride + j]);
  }
}

}  // namespace

template <typename TA>
void launch_grouped_mma(const TA* x, const int32_t* row_token, const RowTile* tiles, int max_tiles,
                        const MoeKernelPlan& plan, TA* act, TA* y, cudaStream_t stream) {
  const int H = plan.hidden, Imax = plan.max_intermediate;
  const auto* table = static_cast<const MoeExpertMatrices*>(plan.table.data_ptr());
  moe_grouped_mma_gate_up_kernel<TA><<<dim3(max_tiles, (Imax + kTileN - 1) / kTileN), kThreads, 0, stream>>>(
      x, H, row_token, tiles, table, Imax, act);
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_optimized");
  moe_grouped_mma_down_kernel<TA><<<dim3(max_tiles, (H + kTileN - 1) / kTileN), kThreads, 0, stream>>>(
      act, Imax, tiles, table, H, y);
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_optimized");
}

template void launch_grouped_mma<__half>(const __half*, const int32_t*, const RowTile*, int, const MoeKernelPlan&,
                                         __half*, __half*, cudaStream_t);
template void launch_grouped_mma<__nv_bfloat16>(const __nv_bfloat16*, const int32_t*, const RowTile*, int,
                                                const MoeKernelPlan&, __nv_bfloat16*, __nv_bfloat16*, cudaStream_t);

}  // namespace marlin::cuda
