// CUDA sampler. Without filters: a grid-wide argmax of logit * inv_temperature + Gumbel noise
// (partials per block, then one block merges). With top-k or top-p: one block finds the keep
// threshold by radix select over the order-preserving keys of the logits (counts for top-k,
// fixed-point probability mass for top-p, so the result does not depend on the order of
// atomics), then draws. The chosen id is the only thing copied back.
#include <algorithm>
#include <climits>

#include "core/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/sampling_kernels_cuda.h"
#include "kernels/sampling_common.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

constexpr int kThreads = 1024;

// Ties go to the smaller id, as in the CPU reference; NaN never wins.
__device__ __forceinline__ void better(float& best, int& id, float v, int i) {
  if (v > best || (v == best && i < id)) {
    best = v;
    id = i;
  }
}

// Block-wide argmax; the result is valid in thread 0.
__device__ void block_argmax(float& best, int& id) {
  __shared__ float s_v[32];
  __shared__ int s_i[32];
  for (int o = 16; o > 0; o /= 2)
    better(best, id, __shfl_down_sync(0xffffffffu, best, o), __shfl_down_sync(0xffffffffu, id, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) {
    s_v[warp] = best;
    s_i[warp] = id;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    best = lane < warps ? s_v[lane] : -INFINITY;
    id = lane < warps ? s_i[lane] : INT_MAX;
    for (int o = 16; o > 0; o /= 2)
      better(best, id, __shfl_down_sync(0xffffffffu, best, o), __shfl_down_sync(0xffffffffu, id, o));
  }
}

// Block-wide sum or max of floats in a fixed order (deterministic); the result in every thread.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float s[32];
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / 32) ? s[lane] : (kMax ? -INFINITY : 0.0f);
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  return v;
}

__device__ __forceinline__ float score(float v, float inv_t, uint64_t seed, uint64_t draw, int V,
                                       int i) {
  return inv_t == 0.0f ? v : v * inv_t + sampling::gumbel(seed, draw, V, i);
}

template <typename T>
__global__ void argmax_partial_kernel(const T* __restrict__ x, int V, float inv_t, uint64_t seed,
                                      uint64_t draw, float* __restrict__ part_v,
                                      int* __restrict__ part_i) {
  float best = -INFINITY;
  int id = INT_MAX;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < V; i += gridDim.x * blockDim.x) {
    const float v = to_float(x[i]);
    if (!isnan(v)) better(best, id, score(v, inv_t, seed, draw, V, i), i);
  }
  block_argmax(best, id);
  if (threadIdx.x == 0) {
    part_v[blockIdx.x] = best;
    part_i[blockIdx.x] = id;
  }
}

__global__ void argmax_merge_kernel(const float* __restrict__ part_v,
                                    const int* __restrict__ part_i, int parts, int V,
                                    int* __restrict__ out) {
  float best = -INFINITY;
  int id = INT_MAX;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) better(best, id, part_v[i], part_i[i]);
  block_argmax(best, id);
  if (threadIdx.x == 0) *out = id == INT_MAX ? V : id;
}

// One block: thresholds for top-k (count) and top-p (mass), then the Gumbel-max draw.
template <typename T>
__global__ void __launch_bounds__(kThreads)
filtered_sample_kernel(const T* __restrict__ x, int V, float inv_t, int top_k, float top_p,
                       uint64_t seed, uint64_t draw, int* __restrict__ out) {
  __shared__ unsigned long long hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ unsigned long long s_rest;
  const int tid = threadIdx.x;

  // Radix select from the top digit down: weight(i) is 1 for top-k, the fixed-point
  // probability for top-p; finds the key at which the weight summed from the largest reaches
  // `target`, among tokens whose key is >= floor.
  auto select = [&](uint32_t floor, unsigned long long target, auto weight) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      for (int i = tid; i < V; i += blockDim.x) {
        const float v = to_float(x[i]);
        const uint32_t key = sampling::order_key(v);
        if (isnan(v) || key < floor || (key & mask) != prefix) continue;
        const unsigned long long w = weight(v);
        if (w) atomicAdd(&hist[(key >> shift) & 255u], w);
      }
      __syncthreads();
      if (tid == 0) {
        int d = 255;
        for (; d > 0 && hist[d] < target; --d) target -= hist[d];
        s_prefix = prefix | (static_cast<uint32_t>(d) << shift);
        s_rest = target;
      }
      __syncthreads();
      prefix = s_prefix;
      target = s_rest;
      mask |= 255u << shift;
    }
    return prefix;
  };

  uint32_t threshold = 0;
  if (top_k > 0 && top_k < V)
    threshold = select(0u, static_cast<unsigned long long>(top_k),
                       [](float) { return 1ull; });
  if (top_p < 1.0f) {
    float local_max = -INFINITY;
    for (int i = tid; i < V; i += blockDim.x) {
      const float v = to_float(x[i]);
      if (!isnan(v)) local_max = fmaxf(local_max, v);
    }
    const float m = block_reduce<true>(local_max) * inv_t;  // the maximum is always kept
    float local_z = 0.0f;
    for (int i = tid; i < V; i += blockDim.x) {
      const float v = to_float(x[i]);
      if (!isnan(v) && sampling::order_key(v) >= threshold) local_z += expf(v * inv_t - m);
    }
    const float inv_z = 1.0f / block_reduce<false>(local_z);
    auto mass = [=](float v) {
      return static_cast<unsigned long long>(expf(v * inv_t - m) * inv_z * 4294967296.0f);
    };
    unsigned long long local_total = 0;
    for (int i = tid; i < V; i += blockDim.x) {
      const float v = to_float(x[i]);
      if (!isnan(v) && sampling::order_key(v) >= threshold) local_total += mass(v);
    }
    __shared__ unsigned long long s_total;
    if (tid == 0) s_total = 0;
    __syncthreads();
    atomicAdd(&s_total, local_total);
    __syncthreads();
    // At least 1 so the selected digit always holds a token.
    const unsigned long long target =
        max(1ull, static_cast<unsigned long long>(static_cast<double>(top_p) * s_total));
    threshold = max(threshold, select(threshold, target, mass));
  }

  float best = -INFINITY;
  int id = INT_MAX;
  for (int i = tid; i < V; i += blockDim.x) {
    const float v = to_float(x[i]);
    if (!isnan(v) && sampling::order_key(v) >= threshold)
      better(best, id, score(v, inv_t, seed, draw, V, i), i);
  }
  block_argmax(best, id);
  if (tid == 0) *out = id == INT_MAX ? V : id;
}

// One block per row: the greedy choice of each, no noise.
template <typename T>
__global__ void argmax_rows_kernel(const T* __restrict__ x, int V, int* __restrict__ out) {
  const T* row = x + static_cast<int64_t>(blockIdx.x) * V;
  float best = -INFINITY;
  int id = INT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = to_float(row[i]);
    if (!isnan(v)) better(best, id, v, i);
  }
  block_argmax(best, id);
  if (threadIdx.x == 0) out[blockIdx.x] = id == INT_MAX ? V : id;
}

template <typename T>
__global__ void repetition_penalty_kernel(const T* __restrict__ in, T* __restrict__ out,
                                          const int* __restrict__ ids, int n, float penalty) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  // Reads the unpenalized logit, so an id listed twice is penalized once.
  const float x = to_float(in[ids[i]]);
  out[ids[i]] = from_float<T>(x > 0.0f ? x / penalty : x * penalty);
}

template <typename T>
void launch_sample(const Tensor& logits, const SamplingParams& p, int* out, cudaStream_t stream) {
  const T* x = static_cast<const T*>(logits.data_ptr());
  const int V = static_cast<int>(logits.numel());
  const bool filtered =
      p.inv_temperature != 0.0f && ((p.top_k > 0 && p.top_k < V) || p.top_p < 1.0f);
  if (filtered) {
    const int top_k = static_cast<int>(std::min<int64_t>(p.top_k, V));
    filtered_sample_kernel<T><<<1, kThreads, 0, stream>>>(x, V, p.inv_temperature, top_k,
                                                          p.top_p, p.seed, p.draw, out);
    MARLIN_CUDA_CHECK_LAUNCH("sample_token");
    return;
  }
  const int parts = std::clamp((V + 4095) / 4096, 1, 2 * multiprocessor_count(logits.device().index));
  Tensor part_v = Tensor::empty({parts}, DType::f32, logits.device());
  Tensor part_i = Tensor::empty({parts}, DType::i32, logits.device());
  argmax_partial_kernel<T><<<parts, 256, 0, stream>>>(x, V, p.inv_temperature, p.seed, p.draw,
                                                      part_v.data<float>(), part_i.data<int32_t>());
  MARLIN_CUDA_CHECK_LAUNCH("sample_token");
  argmax_merge_kernel<<<1, 256, 0, stream>>>(part_v.data<float>(), part_i.data<int32_t>(), parts,
                                             V, out);
  MARLIN_CUDA_CHECK_LAUNCH("sample_token (merge)");
}

}  // namespace

int64_t sample_token(const Tensor& logits, const SamplingParams& p) {
  auto stream = static_cast<cudaStream_t>(current_stream(logits.device().index).handle);
  Tensor id_device = Tensor::empty({1}, DType::i32, logits.device());
  int* out = id_device.data<int32_t>();
  switch (logits.dtype()) {
    case DType::f32: launch_sample<float>(logits, p, out, stream); break;
    case DType::f16: launch_sample<__half>(logits, p, out, stream); break;
    default: launch_sample<__nv_bfloat16>(logits, p, out, stream); break;
  }
  int32_t id = 0;
  check_not_capturing(current_stream(logits.device().index), "sample_token");
  MARLIN_CUDA_CHECK(cudaMemcpyAsync(&id, out, sizeof(id), cudaMemcpyDeviceToHost, stream),
                    "sample_token");
  MARLIN_CUDA_CHECK(cudaStreamSynchronize(stream), "sample_token");
  return id;
}

void argmax_rows(const Tensor& logits, const Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(logits.device().index).handle);
  const int rows = static_cast<int>(logits.size(0)), V = static_cast<int>(logits.size(1));
  if (rows == 0) return;
  int* o = out.data<int32_t>();
  switch (logits.dtype()) {
    case DType::f32: argmax_rows_kernel<<<rows, kThreads, 0, stream>>>(logits.data<float>(), V, o); break;
    case DType::f16:
      argmax_rows_kernel<<<rows, kThreads, 0, stream>>>(static_cast<const __half*>(logits.data_ptr()), V, o);
      break;
    default:
      argmax_rows_kernel<<<rows, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits.data_ptr()), V, o);
      break;
  }
  MARLIN_CUDA_CHECK_LAUNCH("argmax_rows");
}

void repetition_penalty(const Tensor& logits, const Tensor& ids, float penalty, Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(logits.device().index).handle);
  MARLIN_CUDA_CHECK(cudaMemcpyAsync(out.data_ptr(), logits.data_ptr(), logits.nbytes(),
                                    cudaMemcpyDeviceToDevice, stream),
                    "repetition_penalty");
  const int n = static_cast<int>(ids.numel());
  if (n == 0) return;
  const int* id = ids.data<int32_t>();
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  switch (logits.dtype()) {
    case DType::f32:
      repetition_penalty_kernel<<<blocks, 256, 0, stream>>>(logits.data<float>(), out.data<float>(), id, n, penalty);
      break;
    case DType::f16:
      repetition_penalty_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __half*>(logits.data_ptr()), static_cast<__half*>(out.data_ptr()), id, n, penalty);
      break;
    default:
      repetition_penalty_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits.data_ptr()), static_cast<__nv_bfloat16*>(out.data_ptr()), id, n, penalty);
      break;
  }
  MARLIN_CUDA_CHECK_LAUNCH("repetition_penalty");
}

}  // namespace marlin::cuda
