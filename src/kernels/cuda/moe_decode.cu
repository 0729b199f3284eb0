// One-token MoE on CUDA (dispatch_moe_decode's expert part): skinny quantized GEMVs that read the
// chosen experts' ids from device memory and their weights through the plan's pointer table, so
// only the k chosen experts (and the shared experts) are read and the host never waits.
//   launch 1: for every slot (chosen expert or shared), gate and up over H, split-K across
//             blocks, then SwiGLU with Transformers' roundings -> act [slots, I];
//   launch 2: down over I for every slot, times the slot's routing weight, summed over slots and
//             K splits in a fixed order by the last block of each column tile -> out [H].
// A warp covers 32 * CPT columns with one 16-byte load of packed words per thread per row; the
// 8 warps of a block split the block's K range (as gemm_q.cu's skinny kernel). These CUDA-core
// kernels serve the tables the tensor-core ones (moe_decode_mma.cu) cannot take.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/moe_common.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {

namespace moe_detail {

// Per-device scratch, grown on demand; counters are left zero by every kernel.
DecodeScratch decode_scratch(int device, int64_t floats, int64_t counters, int64_t act_bytes) {
  struct Buffers {
    Tensor partials, counters, act;
  };
  static std::mutex mutex;
  static std::vector<Buffers> per_device(64);
  std::lock_guard<std::mutex> lock(mutex);
  Buffers& b = per_device.at(static_cast<size_t>(device));
  const Device d = Device::cuda(device);
  if (!b.partials.defined() || b.partials.numel() < floats)
    b.partials = Tensor::empty({std::max<int64_t>(floats, 1 << 16)}, DType::f32, d);
  if (!b.counters.defined() || b.counters.numel() < counters)
    b.counters = Tensor::zeros({std::max<int64_t>(counters, 1024)}, DType::u32, d);
  if (!b.act.defined() || b.act.numel() < act_bytes)
    b.act = Tensor::empty({std::max<int64_t>(act_bytes, 1 << 16)}, DType::u8, d);
  return {b.partials.data<float>(), b.counters.data<unsigned>(), b.act.data_ptr()};
}

}  // namespace moe_detail

namespace {

using namespace moe_detail;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kStageK = 256;

// Adds the dot products of a_s (kStageK staged activations, prescaled) with NMAT matrices'
// columns col0..col0+CPT over rows [kc, kend) of this stage.
template <QuantFormat F, int CPT, int NMAT>
__device__ __forceinline__ void accumulate_stage(const float* a_s, const MoeMatrix (&W)[NMAT],
                                                 int col0, int kc, int kend,
                                                 float (&acc)[NMAT][CPT]) {
  constexpr int P = Codec<F>::P;
  constexpr int kRowsPerWarp = kStageK / P / kWarps;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int mat = 0; mat < NMAT; ++mat) {
    const MoeMatrix& w = W[mat];
    uint32_t words[kRowsPerWarp][CPT];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int k = kc + (warp * kRowsPerWarp + i) * P;
      if (k < kend) {
        load_words<CPT>(w.packed + static_cast<int64_t>(k / P) * w.N + col0, words[i]);
      } else {
#pragma unroll
        for (int c = 0; c < CPT; ++c) words[i][c] = 0;
      }
    }
    const __half* scales = static_cast<const __half*>(w.scales);
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int kl = (warp * kRowsPerWarp + i) * P;
      const int k = kc + kl;
      if (k >= kend) break;
      const __half* srow = scales + static_cast<int64_t>(k / w.group_size) * w.N + col0;
#pragma unroll
      for (int c = 0; c < CPT; ++c) {
        float v[P];
        decode_word<F>(words[i][c], __half2float(srow[c]) * Codec<F>::s_prescale, v);
#pragma unroll
        for (int j = 0; j < P; ++j) acc[mat][c] = fmaf(a_s[kl + j], v[j], acc[mat][c]);
      }
    }
  }
}

// acc[mat][c] = sum over k in [kbeg, kend) of a[k] * W_mat[k][col0 + c], this thread's share
// (summed over the block's warps by the caller).
template <QuantFormat F, int CPT, int NMAT, typename TA>
__device__ void gemv_range(const TA* __restrict__ a, const MoeMatrix (&W)[NMAT], int col0,
                           bool active, int kbeg, int kend, float* a_s, float (&acc)[NMAT][CPT]) {
  for (int kc = kbeg; kc < kend; kc += kStageK) {
    __syncthreads();
    for (int i = threadIdx.x; i < kStageK; i += kThreads)
      a_s[i] = kc + i < kend ? to_float(a[kc + i]) * Codec<F>::a_prescale : 0.0f;
    __syncthreads();
    if (active) accumulate_stage<F, CPT, NMAT>(a_s, W, col0, kc, kend, acc);
  }
}

// Sums the block's warps: red[kWarps][NMAT][32 * CPT]; returns after a barrier, with the sums
// in red[0].
template <int CPT, int NMAT>
__device__ void reduce_warps(float (&acc)[NMAT][CPT], float* red) {
  constexpr int kTileCols = 32 * CPT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
#pragma unroll
  for (int mat = 0; mat < NMAT; ++mat)
#pragma unroll
    for (int c = 0; c < CPT; ++c) red[(warp * NMAT + mat) * kTileCols + lane * CPT + c] = acc[mat][c];
  __syncthreads();
  for (int i = threadIdx.x; i < NMAT * kTileCols; i += kThreads) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) v += red[w * NMAT * kTileCols + i];
    red[i] = v;
  }
  __syncthreads();
}

// grid (column tiles of I, K splits of H, slots). partials [splits][slots][2][Imax].
template <int CPT, typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_decode_gate_up_kernel(const TA* __restrict__ x, const int32_t* __restrict__ ids,
                              const MoeExpertMatrices* __restrict__ table, int num_experts,
                              int top_k, int H, int Imax, int k_per_split,
                              float* __restrict__ partials, unsigned* __restrict__ counters,
                              TA* __restrict__ act) {
  constexpr int kTileCols = 32 * CPT;
  __shared__ float a_s[kStageK];
  __shared__ float red[kWarps * 2 * kTileCols];
  const int slot = blockIdx.z, slots = gridDim.z;
  const int expert = slot < top_k ? ids[slot] : num_experts;
  const MoeMatrix gate = table[expert].gate, up = table[expert].up;
  const int N = gate.N, tile0 = blockIdx.x * kTileCols;
  if (tile0 >= N) return;  // this expert is narrower than the widest one
  const int col0 = tile0 + (threadIdx.x % 32) * CPT;
  const int kbeg = blockIdx.y * k_per_split, kend = min(H, kbeg + k_per_split);
  float acc[2][CPT] = {};
  const MoeMatrix W[2] = {gate, up};
  dispatch_format(gate.bits, [&](auto tag) {
    gemv_range<decltype(tag)::value, CPT, 2>(x, W, col0, col0 < N, kbeg, kend, a_s, acc);
  });
  reduce_warps<CPT, 2>(acc, red);
  const bool split = gridDim.y > 1;
  if (split) {
    for (int i = threadIdx.x; i < 2 * kTileCols; i += kThreads) {
      const int mat = i / kTileCols, col = tile0 + i % kTileCols;
      if (col < N)
        partials[((static_cast<int64_t>(blockIdx.y) * slots + slot) * 2 + mat) * Imax + col] = red[i];
    }
    if (!arrive_last(&counters[slot * gridDim.x + blockIdx.x], gridDim.y)) return;
  }
  for (int c = threadIdx.x; c < kTileCols; c += kThreads) {
    const int col = tile0 + c;
    if (col >= N) continue;
    float g = 0.0f, u = 0.0f;
    if (split) {
      for (unsigned s = 0; s < gridDim.y; ++s) {
        g += __ldcg(partials + ((static_cast<int64_t>(s) * slots + slot) * 2 + 0) * Imax + col);
        u += __ldcg(partials + ((static_cast<int64_t>(s) * slots + slot) * 2 + 1) * Imax + col);
      }
    } else {
      g = red[c];
      u = red[kTileCols + c];
    }
    act[static_cast<int64_t>(slot) * Imax + col] = swiglu<TA>(g, u);
  }
}

// grid (column tiles of H, K splits of I, slots). partials [slots][splits][H].
template <int CPT, typename TA>
__global__ void __launch_bounds__(kThreads)
    moe_decode_down_kernel(const TA* __restrict__ act, const int32_t* __restrict__ ids,
                           const float* __restrict__ weights,
                           const MoeExpertMatrices* __restrict__ table, int num_experts,
                           int top_k, int H, int Imax, int k_per_split,
                           float* __restrict__ partials, unsigned* __restrict__ counters,
                           TA* __restrict__ out) {
  constexpr int kTileCols = 32 * CPT;
  __shared__ float a_s[kStageK];
  __shared__ float red[kWarps * kTileCols];
  const int slot = blockIdx.z;
  const int expert = slot < top_k ? ids[slot] : num_experts;
  const float weight = slot < top_k ? weights[slot] : 1.0f;
  const MoeMatrix down = table[expert].down;
  const int tile0 = blockIdx.x * kTileCols;
  const int col0 = tile0 + (threadIdx.x % 32) * CPT;
  const int kbeg = blockIdx.y * k_per_split, kend = min(down.K, kbeg + k_per_split);
  float acc[1][CPT] = {};
  const MoeMatrix W[1] = {down};
  dispatch_format(down.bits, [&](auto tag) {
    gemv_range<decltype(tag)::value, CPT, 1>(act + static_cast<int64_t>(slot) * Imax, W, col0,
                                             col0 < H, kbeg, kend, a_s, acc);
  });
  reduce_warps<CPT, 1>(acc, red);
  const int64_t part = static_cast<int64_t>(slot) * gridDim.y + blockIdx.y;
  for (int c = threadIdx.x; c < kTileCols; c += kThreads)
    if (tile0 + c < H) partials[part * H + tile0 + c] = red[c] * weight;
  if (!arrive_last(&counters[blockIdx.x], gridDim.y * gridDim.z)) return;
  const int64_t parts = static_cast<int64_t>(gridDim.y) * gridDim.z;
  for (int c = threadIdx.x; c < kTileCols; c += kThreads) {
    const int col = tile0 + c;
    if (col >= H) continue;
    float v = 0.0f;
    for (int64_t p = 0; p < parts; ++p) v += __ldcg(partials + p * H + col);
    out[col] = from_float<TA>(v);
  }
}

// Splits of a K range so that about four blocks per SM run, each at least one stage long.
int choose_splits(int sms, int64_t blocks_without_split, int K, int& k_per_split) {
  int splits = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((4 * sms + blocks_without_split - 1) / blocks_without_split,
                           (K + kStageK - 1) / kStageK)));
  k_per_split = (K + splits - 1) / splits;
  k_per_split = (k_per_split + kStageK - 1) / kStageK * kStageK;
  return (K + k_per_split - 1) / k_per_split;
}

template <int CPT, typename TA>
void launch_decode(const Tensor& x, const Tensor& ids, const Tensor& weights,
                   const MoeKernelPlan& plan, const Tensor& out, cudaStream_t stream) {
  constexpr int kTileCols = 32 * CPT;
  const int device = x.device().index;
  const int H = plan.hidden, Imax = plan.max_intermediate, E = plan.num_experts;
  const int k = static_cast<int>(ids.size(1));
  const int slots = k + (plan.has_shared ? 1 : 0);
  const int sms = multiprocessor_count(device);
  const int tiles_i = (Imax + kTileCols - 1) / kTileCols, tiles_h = (H + kTileCols - 1) / kTileCols;
  int kps_gu = 0, kps_down = 0;
  const int splits_gu = choose_splits(sms, static_cast<int64_t>(tiles_i) * slots, H, kps_gu);
  const int splits_down = choose_splits(sms, static_cast<int64_t>(tiles_h) * slots, Imax, kps_down);
  const int64_t floats = std::max<int64_t>(static_cast<int64_t>(splits_gu) * slots * 2 * Imax,
                                           static_cast<int64_t>(slots) * splits_down * H);
  const DecodeScratch s = decode_scratch(device, floats, std::max(slots * tiles_i, tiles_h),
                                         static_cast<int64_t>(slots) * Imax * sizeof(TA));
  const auto* table = static_cast<const MoeExpertMatrices*>(plan.table.data_ptr());
  TA* act = static_cast<TA*>(s.act);
  moe_decode_gate_up_kernel<CPT, TA><<<dim3(tiles_i, splits_gu, slots), kThreads, 0, stream>>>(
      static_cast<const TA*>(x.data_ptr()), ids.data<int32_t>(), table, E, k, H, Imax, kps_gu,
      s.partials, s.counters, act);
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_decode");
  moe_decode_down_kernel<CPT, TA><<<dim3(tiles_h, splits_down, slots), kThreads, 0, stream>>>(
      act, ids.data<int32_t>(), weights.data<float>(), table, E, k, H, Imax, kps_down, s.partials,
      s.counters, static_cast<TA*>(out.data_ptr()));
  MARLIN_CUDA_CHECK_LAUNCH("dispatch_moe_decode");
}

std::atomic<bool> g_force_cuda_cores{false};

}  // namespace

void set_force_cuda_core_moe(bool on) { g_force_cuda_cores.store(on); }

// Tests (set_force_cuda_core_moe) and MARLIN_MOE_CUDA_CORES=1 (to measure both paths).
bool moe_tensor_cores(const MoeKernelPlan& plan) {
  static const bool from_env = env_is("MARLIN_MOE_CUDA_CORES", "1");
  return plan.tensor_cores && !from_env && !g_force_cuda_cores.load(std::memory_order_relaxed);
}

bool moe_decode_takes(const MoeKernelPlan& plan, int64_t T) {
  static const bool grouped = env_is("MARLIN_MOE_GROUPED", "1");
  if (T == 1) return true;
  return T >= 1 && T <= kMoeDecodeMaxTokens && !grouped && moe_tensor_cores(plan);
}

void moe_decode_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                        const MoeKernelPlan& plan, const Tensor& out) {
  MARLIN_CHECK(moe_decode_takes(plan, x.size(0)), "dispatch_moe_decode", x.size(0),
               " tokens: the decode kernels take one, or up to ", kMoeDecodeMaxTokens, " on the tensor cores");
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(x.device().index).handle);
  MARLIN_DISPATCH_FLOAT16(x.dtype(), TA, "dispatch_moe_decode", {
    if (moe_tensor_cores(plan)) launch_decode_mma<TA>(x, ids, weights, plan, out, stream);
    else if (plan.vector4) launch_decode<4, TA>(x, ids, weights, plan, out, stream);
    else launch_decode<1, TA>(x, ids, weights, plan, out, stream);
  });
}

}  // namespace marlin::cuda
