// MoE routing on CUDA: one warp per token. The top-k is k rounds of a warp argmax (larger
// value, then lower index); if any chosen expert's score equals another score (or is NaN), the
// order of equal values is what torch.topk's introselect makes it, so lane 0 then reruns the
// selection with the exact CPU algorithm (torch_topk.h). The router kernel computes the f32
// logits (one warp per expert) and lets the last block of each token route it: one launch.
#include <algorithm>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/moe_common.cuh"
#include "kernels/cuda/moe_kernels_cuda.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using moe::Method;
using moe::RouteParams;
using moe::Scoring;

constexpr int kRouterWarps = 8;

// Per-warp shared scratch of the routing: scores, choice, group scores [E] floats; chosen [E]
// ints; queue [E] entries; ids [E] ints.
struct RouteScratch {
  float* scores;
  float* choice;
  float* group_scores;
  int32_t* chosen;
  topk::Entry* queue;
  int32_t* ids;
};

__host__ __device__ constexpr size_t route_scratch_bytes(int E) {
  return static_cast<size_t>(E) * (3 * sizeof(float) + 2 * sizeof(int32_t) + sizeof(topk::Entry));
}

__device__ RouteScratch route_scratch(char* base, int E) {
  RouteScratch s;
  s.queue = reinterpret_cast<topk::Entry*>(base);
  s.scores = reinterpret_cast<float*>(s.queue + E);
  s.choice = s.scores + E;
  s.group_scores = s.choice + E;
  s.chosen = reinterpret_cast<int32_t*>(s.group_scores + E);
  s.ids = s.chosen + E;
  return s;
}

// torch.topk's selection (torch_topk.h), run by one lane. Out of line: it is taken on ties and
// for the group choice only, and inlined it made the warp's common path miss the instruction
// cache (ncu: 40% of the routing warp's stalls were instruction fetches).
__device__ __noinline__ void select_exactly(const float* values, int n, int k, topk::Entry* queue, int32_t* out) {
  topk::select(values, n, k, queue, out);
}

// The softmax scores of the logits, by the calling warp. Out of line, as is the group limit
// below: the routing runs once a launch, by one warp, and its common path (sigmoid or softmax,
// one group, no tie) is then a short stretch of code that the SM fetches once (ncu: the routing
// warp stalled on instruction fetches; ~4,800 of the kernel's ~5,700 instructions came after the
// arrival, where one warp routing took 4.3 us of the GLM-4.7-Flash router's 7.3, H200 traced).
__device__ __noinline__ void softmax_scores_warp(const float* logits, int E, float* scores) {
  const int lane = threadIdx.x % 32;
  float mx = -INFINITY;
#pragma unroll 1
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, logits[e]);
  mx = warp_max(mx);
  float sum = 0.0f;
#pragma unroll 1
  for (int e = lane; e < E; e += 32) {
    scores[e] = expf(logits[e] - mx);
    sum += scores[e];
  }
  const float inv = 1.0f / warp_sum(sum);
#pragma unroll 1
  for (int e = lane; e < E; e += 32) scores[e] *= inv;
}

// The group limit (n_group > 1): the experts of groups not among the topk_group best get the
// masked selection score.
__device__ __noinline__ void limit_groups_warp(const RouteParams& p, const RouteScratch& s) {
  const int lane = threadIdx.x % 32, E = p.num_experts;
  const int G = p.n_group, per_group = E / G;
#pragma unroll 1
  for (int g = lane; g < G; g += 32)
    s.group_scores[g] = moe::group_score(s.choice + g * per_group, per_group, p.method);
  __syncwarp();
  if (lane == 0) select_exactly(s.group_scores, G, p.topk_group, s.queue, s.chosen);
  __syncwarp();
  const float masked = p.method == Method::noaux_tc ? -INFINITY : 0.0f;
#pragma unroll 1
  for (int e = lane; e < E; e += 32) {
    bool keep = false;
#pragma unroll 1
    for (int j = 0; j < p.topk_group; ++j) keep = keep || s.chosen[j] == e / per_group;
    if (!keep) s.choice[e] = masked;
  }
  __syncwarp();
}

// An unsigned key in the order of the floats (not NaN; -0 keyed as +0, which it equals), and the
// float back from it (+0 for either zero).
__device__ __forceinline__ uint32_t ordered_key(float v) {
  const uint32_t bits = __float_as_uint(v + 0.0f);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

// Routes one token with the calling warp: logits [E] (any memory), results to ids/weights [k]
// (global).
__device__ void route_token_warp(const float* logits, const float* bias, const RouteParams& p,
                                 const RouteScratch& s, int32_t* ids_out, float* weights_out) {
  const int lane = threadIdx.x % 32, E = p.num_experts, k = p.top_k;
  bool has_nan = false;
  if (p.scoring == Scoring::sigmoid) {
#pragma unroll 1
    for (int e = lane; e < E; e += 32) s.scores[e] = moe::sigmoid_f32(logits[e]);
  } else {
    softmax_scores_warp(logits, E, s.scores);
  }
#pragma unroll 1
  for (int e = lane; e < E; e += 32) {
    s.choice[e] = p.has_bias ? s.scores[e] + bias[e] : s.scores[e];
    has_nan = has_nan || isnan(s.choice[e]);
  }
  __syncwarp();
  if (p.method != Method::greedy && p.n_group > 1) limit_groups_warp(p, s);

  // k rounds of argmax over the experts not yet taken; `taken` has a bit per expert of this lane.
  uint32_t taken = 0;
  bool tie = __any_sync(0xffffffffu, has_nan);
  float last_value = 0.0f;
#pragma unroll 1
  for (int r = 0; r <= k && r < E && !tie; ++r) {
    float bv = -INFINITY;
    int bi = -1;
    bool dup = false;
#pragma unroll 1
    for (int i = 0, e = lane; e < E; ++i, e += 32) {
      if (taken & (1u << i)) continue;
      const float v = s.choice[e];
      if (bi < 0 || v > bv) {
        bv = v;
        bi = e;
        dup = false;
      } else if (v == bv) {
        dup = true;
      }
    }
    // The warp's largest value, and the lowest expert index among the lanes that hold it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // Two redux.sync on an order-preserving integer key, instead of ten dependent shuffles.
    const uint32_t key = bi < 0 ? 0u : ordered_key(bv);
    const uint32_t top = __reduce_max_sync(0xffffffffu, key);
    const bool holds = bi >= 0 && key == top;
    const int wi = static_cast<int>(__reduce_min_sync(0xffffffffu, holds ? static_cast<uint32_t>(bi) : 0xffffffffu));
    const float wv = key_value(top);
#else
    float wv = bv;
    int wi = bi;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, wv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, wi, o);
      if (oi >= 0 && (wi < 0 || ov > wv || (ov == wv && oi < wi))) {
        wv = ov;
        wi = oi;
      }
    }
    const bool holds = bi >= 0 && bv == wv;
#endif
    const unsigned holders = __ballot_sync(0xffffffffu, holds);
    const bool equal_inside = __any_sync(0xffffffffu, holds && dup);
    if (r == k) {  // the best one left out must be strictly below the last one chosen
      tie = wv == last_value;
      break;
    }
    tie = __popc(holders) > 1 || equal_inside;
    if (lane == wi % 32) taken |= 1u << (wi / 32);
    if (lane == 0) s.ids[r] = wi;
    last_value = wv;
  }
  __syncwarp();
  if (lane == 0) {
    if (tie) select_exactly(s.choice, E, k, s.queue, s.ids);
    moe::expert_weights(s.scores, s.choice, s.ids, p, weights_out);
#pragma unroll 1
    for (int j = 0; j < k; ++j) ids_out[j] = s.ids[j];
  }
  __syncwarp();
}

__global__ void moe_route_kernel(const float* __restrict__ logits, const float* __restrict__ bias,
                                 RouteParams p, int32_t* __restrict__ ids,
                                 float* __restrict__ weights, int T) {
  extern __shared__ __align__(16) char smem[];
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int t = blockIdx.x * warps + warp;
  if (t >= T) return;
  const RouteScratch s = route_scratch(smem + warp * route_scratch_bytes(p.num_experts), p.num_experts);
  route_token_warp(logits + static_cast<int64_t>(t) * p.num_experts, bias, p, s,
                   ids + static_cast<int64_t>(t) * p.top_k, weights + static_cast<int64_t>(t) * p.top_k);
}

// The residual add and RMSNorm before a MoE (MoE::forward_add_norm): residual[t] += x[t], then
// normed[t] = RMSNorm(residual[t]) with weight. Every router block of the token computes them
// from the old residual; the last block to finish writes both.
template <typename T>
struct ResidualNorm {
  T* residual = nullptr;  // [T, H], updated in place
  const T* x = nullptr;   // [T, H]; null: no add and norm (x is the router's input)
  const T* weight = nullptr;
  float eps = 0.0f;
  T* normed = nullptr;  // [T, H]
};

// The route scratch rounded up to 16 bytes: the normalized row follows it (with the add and
// norm), then the score bias staged for the routing warp (E floats).
__host__ __device__ constexpr size_t route_scratch_bytes16(int E) { return (route_scratch_bytes(E) + 15) / 16 * 16; }
template <typename T>
__host__ __device__ constexpr size_t normed_row_bytes16(int H, bool add_norm) {
  return add_norm ? (sizeof(T) * H + 15) / 16 * 16 : 0;
}

// Token t's new residual (this thread's 8 values) and normalized row (all H values, to
// normed_row), as norm.cu's vector kernel computes them for rows of at most 8 kRouterWarps x 32
// values: thread i takes values 8i .. 8i + 7, then the block's sum, so the same values.
template <typename T>
__device__ __forceinline__ void add_rms_norm_row(const ResidualNorm<T>& rn, int t, int H, nn::Pack<T, 8>& hv,
                                                 T* normed_row) {
  __shared__ float scratch[32];
  const int64_t off = static_cast<int64_t>(t) * H + threadIdx.x * 8;
  const bool mine = threadIdx.x * 8 < H;
  nn::Pack<T, 8> wv;
  float ss = 0.0f;
  if (mine) {
    const nn::Pack<T, 8> rv = nn::load_pack<T, 8>(rn.residual + off), xv = nn::load_pack<T, 8>(rn.x + off);
    wv = nn::load_pack<T, 8>(rn.weight + threadIdx.x * 8);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      hv.v[e] = from_float<T>(to_float(rv.v[e]) + to_float(xv.v[e]));
      const float a = to_float(hv.v[e]);
      ss += a * a;
    }
  }
  ss = nn::block_reduce<false>(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(H) + rn.eps);
  if (mine) {
    nn::Pack<T, 8> y;
#pragma unroll
    for (int e = 0; e < 8; ++e) y.v[e] = from_float<T>(to_float(wv.v[e]) * nn::round_to<T>(to_float(hv.v[e]) * inv));
    nn::store_pack<T, 8>(normed_row + threadIdx.x * 8, y);
  }
  __syncthreads();
}

// One warp's share of x[t] . W[e] in f32: features h0, h0 + step, ... (8 at a time with
// vector8: 16 bytes of x, 32 of W), four steps' loads in flight.
template <typename T>
__device__ __forceinline__ float router_dot(const T* __restrict__ xr, const float* __restrict__ wr, int H, int h0,
                                            int step, bool vector8) {
  float acc = 0.0f;
  if (vector8) {
#pragma unroll 4
    for (int h = h0 * 8; h < H; h += step * 8) {
      const uint4 xv = *reinterpret_cast<const uint4*>(xr + h);
      const float4 w0 = __ldg(reinterpret_cast<const float4*>(wr + h));
      const float4 w1 = __ldg(reinterpret_cast<const float4*>(wr + h + 4));
      acc = fmaf(bits16_to_float<T>(xv.x & 0xffffu), w0.x, acc);
      acc = fmaf(bits16_to_float<T>(xv.x >> 16), w0.y, acc);
      acc = fmaf(bits16_to_float<T>(xv.y & 0xffffu), w0.z, acc);
      acc = fmaf(bits16_to_float<T>(xv.y >> 16), w0.w, acc);
      acc = fmaf(bits16_to_float<T>(xv.z & 0xffffu), w1.x, acc);
      acc = fmaf(bits16_to_float<T>(xv.z >> 16), w1.y, acc);
      acc = fmaf(bits16_to_float<T>(xv.w & 0xffffu), w1.z, acc);
      acc = fmaf(bits16_to_float<T>(xv.w >> 16), w1.w, acc);
    }
  } else {
    for (int h = h0; h < H; h += step) acc = fmaf(to_float(xr[h]), __ldg(wr + h), acc);
  }
  return warp_sum(acc);
}

// logits[t, e] = x[t] . W[e] in f32, W [E, H]; with `route`, the last block of token t to finish
// routes it. kPerExpert: a block per expert, its warps splitting H (a few tokens: GLM-4.7-Flash's
// 512 KiB router then spreads over 64 SMs, where 8 blocks of 8 experts took ~10 us a token,
// each SM streaming 64 KiB); else a warp per expert (many tokens: each block reads x[t] once
// for 8 experts). E is the router weight's: without `route`, p is unset (MoE::router_logits
// passes default params, num_experts 0).
template <typename T, bool kPerExpert>
__global__ void __launch_bounds__(kRouterWarps * 32)
    moe_router_kernel(const T* __restrict__ x, const float* __restrict__ W, int H, int E,
                      int round_logits, float* __restrict__ logits, unsigned* __restrict__ counters,
                      int route, const float* __restrict__ bias, RouteParams p,
                      int32_t* __restrict__ ids, float* __restrict__ weights, bool vector8,
                      ResidualNorm<T> rn) {
  TRACE_START
  TRACE_WAITED
  pdl_launch_dependents();  // the MoE decode gate/up kernel's blocks may start on free SMs
  extern __shared__ __align__(16) char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.y;
  const T* xr = x + static_cast<int64_t>(t) * H;
  // With rn: this block's own copy of the token's new residual (8 values a thread, kept for the
  // last block to write) and of its normalized row, which the dot products then read.
  nn::Pack<T, 8> new_residual;
  if constexpr (kPerExpert) {
    if (rn.x != nullptr) {
      T* normed_row = reinterpret_cast<T*>(smem + route_scratch_bytes16(E));
      add_rms_norm_row(rn, t, H, new_residual, normed_row);
      xr = normed_row;
    }
  }
  if constexpr (kPerExpert) {
    const int e = blockIdx.x;
    __shared__ float warp_sums[kRouterWarps];
    const float part = router_dot(xr, W + static_cast<int64_t>(e) * H, H, warp * 32 + lane, kRouterWarps * 32, vector8);
    if (lane == 0) warp_sums[warp] = part;
    __syncthreads();
    if (threadIdx.x == 0) {
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < kRouterWarps; ++w) acc += warp_sums[w];
      if (round_logits) acc = moe_detail::round_to<T>(acc);
      logits[static_cast<int64_t>(t) * E + e] = acc;
    }
  } else {
    const int e = blockIdx.x * kRouterWarps + warp;
    if (e < E) {
      float acc = router_dot(xr, W + static_cast<int64_t>(e) * H, H, lane, 32, vector8);
      if (round_logits) acc = moe_detail::round_to<T>(acc);
      if (lane == 0) logits[static_cast<int64_t>(t) * E + e] = acc;
    }
  }
  if (!route) return;
  if (!arrive_last(&counters[t], gridDim.x)) {
    TRACE_END(router)
    return;
  }
  TRACE_MARK(1)
  // Every block of the token has read the old residual: the last one writes the new one, and
  // the normalized row for the experts.
  if (kPerExpert && rn.x != nullptr && threadIdx.x * 8 < H) {
    nn::store_pack<T, 8>(rn.residual + static_cast<int64_t>(t) * H + threadIdx.x * 8, new_residual);
    nn::store_pack<T, 8>(rn.normed + static_cast<int64_t>(t) * H + threadIdx.x * 8,
                         nn::load_pack<T, 8>(xr + threadIdx.x * 8));
  }
  if (warp != 0) return;
  const RouteScratch s = route_scratch(smem, E);
  // The logits of the other blocks, read through L2 into the scratch's ids area (E floats), and
  // the score bias beside them: both loads in flight at once, not the bias a latency later.
  float* row = reinterpret_cast<float*>(s.ids);
  float* bias_row = reinterpret_cast<float*>(smem + route_scratch_bytes16(E) + normed_row_bytes16<T>(H, rn.x != nullptr));
#pragma unroll 4
  for (int i = lane; i < E; i += 32) {
    row[i] = __ldcg(logits + static_cast<int64_t>(t) * E + i);
    if (p.has_bias) bias_row[i] = bias[i];
  }
  __syncwarp();
  TRACE_MARK(2)
  route_token_warp(row, bias_row, p, s, ids + static_cast<int64_t>(t) * p.top_k,
                   weights + static_cast<int64_t>(t) * p.top_k);
  TRACE_END(router)
}

}  // namespace

void moe_route(const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
               const Tensor& ids, const Tensor& weights) {
  const int T = static_cast<int>(logits.size(0));
  const size_t per_warp = route_scratch_bytes(params.num_experts);
  const int warps = static_cast<int>(std::max<size_t>(1, std::min<size_t>(8, 40000 / per_warp)));
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(logits.device().index).handle);
  moe_route_kernel<<<(T + warps - 1) / warps, warps * 32, warps * per_warp, stream>>>(
      logits.data<float>(), bias.defined() ? bias.data<float>() : nullptr, params,
      ids.data<int32_t>(), weights.data<float>(), T);
  MARLIN_CUDA_CHECK_LAUNCH("moe_route");
}

namespace {

template <typename TX>
void launch_router(const Tensor& x, const Tensor& router_weight, bool round_logits, const Tensor& logits,
                   const Tensor& bias, const moe::RouteParams& params, const Tensor& ids, const Tensor& weights,
                   const ResidualNorm<TX>& rn) {
  MARLIN_CHECK(x.dim() == 2 && router_weight.dim() == 2 && router_weight.size(1) == x.size(1), "moe_router",
               "x must be [T, H] rows of the router weight's H, got ", x.describe(), " and ",
               router_weight.describe());
  MARLIN_CHECK(rn.x == nullptr || rn.x == x.data_ptr(), "moe_router", "the add's x is the router's input");
  const int T = static_cast<int>(x.size(0)), H = static_cast<int>(x.size(1));
  const int E = static_cast<int>(router_weight.size(0));
  const int device = x.device().index;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(device).handle);
  const bool route = ids.defined();
  MARLIN_CHECK(!route || params.num_experts == E, "moe_router", "the route params have ",
               params.num_experts, " experts, the router weight ", E);
  unsigned* counters = route ? arrival_counters(CounterUser::moe_router, device, T) : nullptr;
  // A block per expert for a decode batch (MARLIN_ROUTER_WARP_PER_EXPERT=1: a warp per expert
  // always, to measure against); always with the add and norm.
  static const bool warp_per_expert = env_is("MARLIN_ROUTER_WARP_PER_EXPERT", "1");
  const bool per_expert = rn.x != nullptr || (T <= kMoeDecodeMaxTokens && !warp_per_expert);
  const size_t smem =
      route ? route_scratch_bytes16(E) + normed_row_bytes16<TX>(H, rn.x != nullptr) + sizeof(float) * E : 0;
  const dim3 grid(per_expert ? E : (E + kRouterWarps - 1) / kRouterWarps, T);
  // 16-byte rows of x (16-bit; the block's own normalized row with the add) and of the router.
  const bool vector8 = H % 8 == 0 &&
                       (rn.x != nullptr || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0) &&
                       reinterpret_cast<uintptr_t>(router_weight.data_ptr()) % 16 == 0;
  auto kernel = per_expert ? moe_router_kernel<TX, true> : moe_router_kernel<TX, false>;
  kernel<<<grid, kRouterWarps * 32, smem, stream>>>(
      static_cast<const TX*>(x.data_ptr()), router_weight.data<float>(), H, E, round_logits ? 1 : 0,
      logits.data<float>(), counters, route ? 1 : 0, bias.defined() ? bias.data<float>() : nullptr, params,
      route ? ids.data<int32_t>() : nullptr, route ? weights.data<float>() : nullptr, vector8, rn);
  MARLIN_CUDA_CHECK_LAUNCH("moe_router");
}

}  // namespace

void moe_router(const Tensor& x, const Tensor& router_weight, bool round_logits,
                const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
                const Tensor& ids, const Tensor& weights) {
  MARLIN_DISPATCH_FLOAT16(x.dtype(), TX, "moe_router", {
    launch_router<TX>(x, router_weight, round_logits, logits, bias, params, ids, weights, ResidualNorm<TX>{});
  });
}

bool moe_router_add_norm_fits(const Tensor& x, const Tensor& norm_weight) {
  const int64_t H = x.size(-1);
  return H % 8 == 0 && H / 8 <= kRouterWarps * 32 && norm_weight.dtype() == x.dtype() &&
         (x.dtype() == DType::f16 || x.dtype() == DType::bf16);
}

void moe_router_add_norm(const Tensor& residual, const Tensor& x, const Tensor& norm_weight, float eps,
                         const Tensor& normed, const Tensor& router_weight, bool round_logits,
                         const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
                         const Tensor& ids, const Tensor& weights) {
  MARLIN_CHECK(x.dim() == 2 && residual.shape() == x.shape() && normed.shape() == x.shape() &&
                   norm_weight.numel() == x.size(1),
               "moe_router", "residual, x and normed must be one [T, H] shape and the norm weight [H], got ",
               residual.describe(), ", ", x.describe(), ", ", normed.describe(), " and ", norm_weight.describe());
  MARLIN_CHECK(moe_router_add_norm_fits(x, norm_weight) && ids.defined(), "moe_router",
               "the add and norm take 16-bit rows of at most ", 8 * kRouterWarps * 32,
               " values (a multiple of 8) with a weight of their dtype, and routing; got ", x.describe(),
               " and ", norm_weight.describe());
  MARLIN_DISPATCH_FLOAT16(x.dtype(), TX, "moe_router", {
    ResidualNorm<TX> rn;
    rn.residual = static_cast<TX*>(residual.data_ptr());
    rn.x = static_cast<const TX*>(x.data_ptr());
    rn.weight = static_cast<const TX*>(norm_weight.data_ptr());
    rn.eps = eps;
    rn.normed = static_cast<TX*>(normed.data_ptr());
    launch_router<TX>(x, router_weight, round_logits, logits, bias, params, ids, weights, rn);
  });
}

}  // namespace marlin::cuda
