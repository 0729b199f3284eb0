// Many-token MoE on CUDA (dispatch_moe_optimized's expert part), without a host sync:
//   1. one block groups the (token, slot) pairs by expert (the shared experts are one more group
//      holding every token) and lays out row tiles of BM rows per group;
//   2. one grouped GEMM launch over all tiles: gate and up of the tile's expert on its gathered
//      token rows, SwiGLU in the epilogue -> act [rows, I];
//   3. one grouped GEMM launch for down -> y [rows, H] (rounded to the activation dtype like
//      each expert's output in Transformers);
//   4. out[t] = sum_j weight[t, j] * y[row(t, j)] + y[shared row of t].
// The grid is sized by the worst case (rows / tile rows + groups tiles); tiles past the real ones
// exit. Steps 2 and 3 run on the tensor cores where the plan allows it (moe_grouped_mma.cu, tiles
// of kMmaTileRows rows); the FMA tiles here (BM rows) dequantize a BK x BN slice of the weights
// into shared memory once and reuse it for all BM rows.
#include <algorithm>

#include "core/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/moe_common.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using namespace moe_detail;

constexpr int kBM = 32, kBN = 64, kBK = 32;
constexpr int kThreads = 256;  // 16 x 16 threads, each 2 rows x 4 columns
constexpr int kGroupThreads = 1024;

// Grouping: rows of group g are [offset[g], offset[g] + count[g]); row_token[row] is the token,
// slot_row[t * k + j] the row of (t, j); tiles of tile_rows rows. Runs as one block.
__global__ void __launch_bounds__(kGroupThreads)
    moe_group_kernel(const int32_t* __restrict__ ids, int T, int k, int num_experts,
                     int has_shared, int tile_rows, int32_t* __restrict__ row_token,
                     int32_t* __restrict__ slot_row, RowTile* __restrict__ tiles, int max_tiles) {
  extern __shared__ int32_t sm[];
  const int G = num_experts + has_shared;
  int32_t* count = sm;               // [G]
  int32_t* offset = count + G;       // [G + 1]
  int32_t* tile_offset = offset + G + 1;  // [G + 1]
  int32_t* cursor = tile_offset + G + 1;  // [G]
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    count[g] = 0;
    cursor[g] = 0;
  }
  __syncthreads();
  const int pairs = T * k;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) atomicAdd(&count[ids[i]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    if (has_shared) count[num_experts] = T;
    offset[0] = tile_offset[0] = 0;
    for (int g = 0; g < G; ++g) {
      offset[g + 1] = offset[g] + count[g];
      tile_offset[g + 1] = tile_offset[g] + (count[g] + tile_rows - 1) / tile_rows;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int e = ids[i];
    const int row = offset[e] + atomicAdd(&cursor[e], 1);
    row_token[row] = i / k;
    slot_row[i] = row;
  }
  if (has_shared)
    for (int t = threadIdx.x; t < T; t += blockDim.x) row_token[offset[num_experts] + t] = t;
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    for (int i = tile_offset[g]; i < tile_offset[g + 1]; ++i) {
      const int begin = offset[g] + (i - tile_offset[g]) * tile_rows;
      tiles[i] = {g, begin, min(begin + tile_rows, offset[g + 1])};
    }
  }
  for (int i = tile_offset[G] + threadIdx.x; i < max_tiles; i += blockDim.x) tiles[i] = {-1, 0, 0};
}

// Dequantizes W[k0 .. k0 + kBK, n0 .. n0 + kBN) (columns past N as 0) into b_s[kBK][kBN], times
// the codec's scale prescale.
template <QuantFormat F>
__device__ __forceinline__ void load_weight_tile(const MoeMatrix& w, int k0, int n0, float* b_s) {
  constexpr int P = Codec<F>::P;
  const __half* scales = static_cast<const __half*>(w.scales);
  for (int idx = threadIdx.x; idx < (kBK / P) * kBN; idx += kThreads) {
    const int pr = idx / kBN, n = idx % kBN, col = n0 + n;
    float v[P];
    if (col < w.N) {
      const uint32_t q = __ldg(w.packed + static_cast<int64_t>(k0 / P + pr) * w.N + col);
      const float s = __half2float(scales[static_cast<int64_t>(k0 / w.group_size) * w.N + col]);
      decode_word<F>(q, s * Codec<F>::s_prescale, v);
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) v[j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < P; ++j) b_s[(pr * P + j) * kBN + n] = v[j];
  }
}

// acc[mat][r][c] += A rows (gathered) @ W_mat over all of K, for this thread's 2 rows x 4 columns.
template <QuantFormat F, int NMAT, typename TA>
__device__ void grouped_tile(const TA* __restrict__ a, int lda, const int32_t* __restrict__ row_index,
                             const RowTile& tile, const MoeMatrix (&W)[NMAT], int n0,
                             float (*a_s)[kBM], float (*b_s)[kBK * kBN], float (&acc)[NMAT][2][4]) {
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  const int rows = tile.row_end - tile.row_begin, K = W[0].K;
  for (int k0 = 0; k0 < K; k0 += kBK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kBM * kBK; idx += kThreads) {
      const int r = idx / kBK, kk = idx % kBK;
      float v = 0.0f;
      if (r < rows) {
        const int64_t src = row_index ? row_index[tile.row_begin + r] : tile.row_begin + r;
        v = to_float(a[src * lda + k0 + kk]) * Codec<F>::a_prescale;
      }
      a_s[kk][r] = v;
    }
#pragma unroll
    for (int mat = 0; mat < NMAT; ++mat) load_weight_tile<F>(W[mat], k0, n0, b_s[mat]);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kBK; ++kk) {
      const float a0 = a_s[kk][tr * 2], a1 = a_s[kk][tr * 2 + 1];
#pragma unroll
      for (int mat = 0; mat < NMAT; ++mat) {
        const float4 b = *reinterpret_cast<const float4*>(&b_s[mat][kk * kBN + tc * 4]);
        const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          acc[mat][0][c] = fmaf(a0, bv[c], acc[mat][0][c]);
          acc[mat][1][c] = fmaf(a1, bv[c], acc[mat][1][c]);
        }
      }
    }
  }
}

// grid (tiles, column tiles of Imax): act[row, :] = SwiGLU(x[token(row)] @ gate, @ up).
template <typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_grouped_gate_up_kernel(const TA* __restrict__ x, int H, const int32_t* __restrict__ row_token,
                               const RowTile* __restrict__ tiles,
                               const MoeExpertMatrices* __restrict__ table, int Imax,
                               TA* __restrict__ act) {
  const RowTile tile = tiles[blockIdx.x];
  if (tile.group < 0) return;
  const MoeMatrix gate = table[tile.group].gate, up = table[tile.group].up;
  const int n0 = blockIdx.y * kBN;
  if (n0 >= gate.N) return;
  // Shared tiles live here, not in grouped_tile: each of its instantiations would get its own.
  __shared__ float a_s[kBK][kBM];
  __shared__ float b_s[2][kBK * kBN];
  float acc[2][2][4] = {};
  const MoeMatrix W[2] = {gate, up};
  dispatch_format(gate.bits, [&](auto tag) {
    grouped_tile<decltype(tag)::value, 2, TA>(x, H, row_token, tile, W, n0, a_s, b_s, acc);
  });
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int r = 0; r < 2; ++r) {
    const int row = tile.row_begin + tr * 2 + r;
    if (row >= tile.row_end) continue;
    for (int c = 0; c < 4; ++c) {
      const int col = n0 + tc * 4 + c;
      if (col >= gate.N) continue;
      act[static_cast<int64_t>(row) * Imax + col] = swiglu<TA>(acc[0][r][c], acc[1][r][c]);
    }
  }
}

// grid (tiles, column tiles of H): y[row, :] = act[row, :I] @ down.
template <typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_grouped_down_kernel(const TA* __restrict__ act, int Imax, const RowTile* __restrict__ tiles,
                            const MoeExpertMatrices* __restrict__ table, int H,
                            TA* __restrict__ y) {
  const RowTile tile = tiles[blockIdx.x];
  if (tile.group < 0) return;
  const MoeMatrix down = table[tile.group].down;
  const int n0 = blockIdx.y * kBN;
  __shared__ float a_s[kBK][kBM];
  __shared__ float b_s[1][kBK * kBN];
  float acc[1][2][4] = {};
  const MoeMatrix W[1] = {down};
  dispatch_format(down.bits, [&](auto tag) {
    grouped_tile<decltype(tag)::value, 1, TA>(act, Imax, nullptr, tile, W, n0, a_s, b_s, acc);
  });
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int r = 0; r < 2; ++r) {
    const int row = tile.row_begin + tr * 2 + r;
    if (row >= tile.row_end) continue;
    for (int c = 0; c < 4; ++c) {
      const int col = n0 + tc * 4 + c;
      if (col < H) y[static_cast<int64_t>(row) * H + col] = from_float<TA>(acc[0][r][c]);
    }
  }
}

// out[t, h] = sum_j weights[t, j] * y[slot_row[t, j], h] (+ y[shared_row0 + t, h]).
template <typename TA>
__global__ void moe_combine_kernel(const TA* __restrict__ y, const int32_t* __restrict__ slot_row,
                                   const float* __restrict__ weights, int k, int H,
                                   int shared_row0, TA* __restrict__ out) {
  const int t = blockIdx.x;
  for (int h = threadIdx.x; h < H; h += blockDim.x) {
    float v = 0.0f;
    for (int j = 0; j < k; ++j)
      v = fmaf(weights[t * k + j], to_float(y[static_cast<int64_t>(slot_row[t * k + j]) * H + h]), v);
    if (shared_row0 >= 0) v += to_float(y[static_cast<int64_t>(shared_row0 + t) * H + h]);
    out[static_cast<int64_t>(t) * H + h] = from_float<TA>(v);
  }
}

}  // namespace

void moe_grouped_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                         const MoeKernelPlan& plan, const Tensor& out) {
  constexpr const char* op = "dispatch_moe_optimized";
  const Device device = x.device();
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(device.index).handle);
  const int T = static_cast<int>(x.size(0)), k = static_cast<int>(ids.size(1));
  const int H = plan.hidden, Imax = plan.max_intermediate, E = plan.num_experts;
  const int G = E + (plan.has_shared ? 1 : 0);
  const int64_t rows = static_cast<int64_t>(T) * k + (plan.has_shared ? T : 0);
  MARLIN_CHECK(rows < (int64_t{1} << 31) / std::max(H, Imax), op, "too many tokens: ", T);
  const bool mma = moe_tensor_cores(plan);
  const int tile_rows = mma ? kMmaTileRows : kBM;
  const int max_tiles = static_cast<int>((rows + tile_rows - 1) / tile_rows + G);
  const Tensor row_token = Tensor::empty({rows}, DType::i32, device);
  const Tensor slot_row = Tensor::empty({static_cast<int64_t>(T) * k}, DType::i32, device);
  const Tensor tiles = Tensor::empty({static_cast<int64_t>(max_tiles) * 3}, DType::i32, device);
  const size_t group_smem = static_cast<size_t>(4 * G + 2) * sizeof(int32_t);
  moe_group_kernel<<<1, kGroupThreads, group_smem, stream>>>(
      ids.data<int32_t>(), T, k, E, plan.has_shared ? 1 : 0, tile_rows, row_token.data<int32_t>(),
      slot_row.data<int32_t>(), reinterpret_cast<RowTile*>(tiles.data<int32_t>()), max_tiles);
  MARLIN_CUDA_CHECK_LAUNCH(op);
  const auto* table = static_cast<const MoeExpertMatrices*>(plan.table.data_ptr());
  const auto* tile_list = reinterpret_cast<const RowTile*>(tiles.data<int32_t>());
  MARLIN_DISPATCH_FLOAT16(x.dtype(), TA, op, {
    const Tensor act = Tensor::empty({rows, Imax}, x.dtype(), device);
    const Tensor y = Tensor::empty({rows, H}, x.dtype(), device);
    if (mma) {
      launch_grouped_mma<TA>(static_cast<const TA*>(x.data_ptr()), row_token.data<int32_t>(), tile_list,
                             max_tiles, plan, static_cast<TA*>(act.data_ptr()), static_cast<TA*>(y.data_ptr()),
                             stream);
    } else {
      moe_grouped_gate_up_kernel<TA><<<dim3(max_tiles, (Imax + kBN - 1) / kBN), kThreads, 0, stream>>>(
          static_cast<const TA*>(x.data_ptr()), H, row_token.data<int32_t>(), tile_list, table, Imax,
          static_cast<TA*>(act.data_ptr()));
      MARLIN_CUDA_CHECK_LAUNCH(op);
      moe_grouped_down_kernel<TA><<<dim3(max_tiles, (H + kBN - 1) / kBN), kThreads, 0, stream>>>(
          static_cast<const TA*>(act.data_ptr()), Imax, tile_list, table, H,
          static_cast<TA*>(y.data_ptr()));
      MARLIN_CUDA_CHECK_LAUNCH(op);
    }
    moe_combine_kernel<TA><<<T, 256, 0, stream>>>(
        static_cast<const TA*>(y.data_ptr()), slot_row.data<int32_t>(), weights.data<float>(), k,
        H, plan.has_shared ? T * k : -1, static_cast<TA*>(out.data_ptr()));
    MARLIN_CUDA_CHECK_LAUNCH(op);
  });
}

}  // namespace marlin::cuda
