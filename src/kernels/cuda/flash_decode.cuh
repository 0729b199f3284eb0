// What the flash-decoding kernels (attention_decode.cu for GQA, mla_attention.cu for MLA) share:
// the online-softmax update of one key, the merge of a block's warp states, and the merge of the
// splits' partial states. A state is (m, l, acc): the running max score, the sum of exp(s - m)
// and the exp-weighted sum of values; a split with no visible key has m = -inf.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/pdl.cuh"

namespace marlin::cuda {

// One key of score s (the same in every lane) and values v (this lane's dims) into a state.
template <int N>
__device__ __forceinline__ void online_softmax_update(float s, float& m, float& l, float (&acc)[N],
                                                      const float (&v)[N]) {
  if (s > m) {  // warp-uniform: s is the same in every lane
    const float c = __expf(m - s);
    l *= c;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] *= c;
    m = s;
  }
  const float p = __expf(s - m);
  l += p;
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] += p * v[i];
}

// A batch of kB keys into a state at once: scores s[u] (the same in every lane; -inf for a key
// not scored) and values v[u] (this lane's dims). One rescale a batch, after the batch's max,
// instead of a compare, branch and rescale per key: the keys' updates no longer wait on each
// other, which made a warp's keys a chain of dependent exponentials (a 512-key Llama-3.1-8B decode
// attention at 8 splits took 23 us a layer against 10 at 32, though it read the same bytes).
template <int kB, int N>
__device__ __forceinline__ void online_softmax_update_batch(const float (&s)[kB], float& m, float& l,
                                                            float (&acc)[N], const float (&v)[kB][N]) {
  float m_new = m;
#pragma unroll
  for (int u = 0; u < kB; ++u) m_new = fmaxf(m_new, s[u]);
  if (m_new == -INFINITY) return;  // no key scored yet (warp-uniform)
  const float c = __expf(m - m_new);  // 0 while m is -inf
  l *= c;
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] *= c;
#pragma unroll
  for (int u = 0; u < kB; ++u) {
    const float p = __expf(s[u] - m_new);  // 0 for a key not scored
    l += p;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] = fmaf(p, v[u][i], acc[i]);
  }
  m = m_new;
}

// A batch of kB keys into the states of kH heads: s[g][u] holds this lane's part of head g's
// score of key u (heads g < ng, a warp-uniform count). The warp sums of every head and key are
// taken together (independent shuffles, not one chain a key), keys u >= scored are masked, then
// each head takes online_softmax_update_batch with the batch's values v.
template <int kH, int kB, int N>
__device__ __forceinline__ void update_heads_batch(float (&s)[kH][kB], int ng, int scored, float (&m)[kH],
                                                   float (&l)[kH], float (&acc)[kH][N], const float (&v)[kB][N]) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2)
#pragma unroll
    for (int g = 0; g < kH; ++g)
#pragma unroll
      for (int u = 0; u < kB; ++u)
        if (g < ng) s[g][u] += __shfl_xor_sync(0xffffffffu, s[g][u], o);
#pragma unroll
  for (int g = 0; g < kH; ++g) {
    if (g >= ng) continue;  // not break: a fully unrolled loop keeps its arrays in registers
#pragma unroll
    for (int u = 0; u < kB; ++u)
      if (u >= scored) s[g][u] = -INFINITY;  // loaded (a valid row), never scored
    online_softmax_update_batch(s[g], m[g], l[g], acc[g], v);
  }
}

// The kWarps warp states of a block in shared memory (s_m, s_l [kWarps][kG]; s_acc
// [kWarps][kG][acc_stride]) merged for heads g < ng and dims d < D, then written: the output rows
// row0 + g when the block is the row's only split, else the split's partial state.
template <int kWarps, int kG, typename T>
__device__ __forceinline__ void write_block_state(const float (*s_m)[kG], const float (*s_l)[kG],
                                                  const float* s_acc, int acc_stride, int ng, int D,
                                                  int64_t row0, int splits, int split, T* out,
                                                  float* part_o, float2* part_ml) {
  for (int idx = threadIdx.x; idx < ng * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float c = __expf(s_m[w][g] - M);
        L += s_l[w][g] * c;
        O += s_acc[(w * kG + g) * acc_stride + d] * c;
      }
    }
    if (splits == 1) {
      out[(row0 + g) * D + d] = from_float<T>(O / L);
    } else {
      const int64_t part = (row0 + g) * splits + split;
      part_o[part * D + d] = O;
      if (d == 0) part_ml[part] = make_float2(M, L);
    }
  }
}

constexpr int kMaxDecodeSplits = 64;  // the split kernels' cap; the merge holds one factor each
// A split of fewer keys costs more in setup and merge than it saves (forcing 40 splits on a
// 640-position cache measured faster than 20, for Llama-3.1-8B and GLM-4.7-Flash alike). At 256
// (before), a 640-position cache got 3 splits: Llama's decode attention ran 24 blocks (GLM's 15),
// each scoring ~200 keys one after the other while the other SMs idled.
constexpr int kMinKeysPerSplit = 16;

// The split count of a decode attention launch over a cache of S positions: `forced` when set
// (tests, the MARLIN_*_SPLITS switches), else enough blocks for `waves` blocks an SM with at
// least kMinKeysPerSplit keys a split; at most kMaxDecodeSplits, and no empty trailing split. It
// depends on S alone, not on the rows' lengths, so a captured CUDA graph stays valid as the
// sequences grow.
inline int decode_split_count(int forced, int base_blocks, int S, int sms, int waves = 2) {
  int splits = forced;
  if (splits <= 0) {
    const int want = (waves * sms + base_blocks - 1) / base_blocks;
    splits = std::min(want, (S + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  }
  splits = std::clamp(std::min(splits, S), 1, kMaxDecodeSplits);
  const int chunk = (S + splits - 1) / splits;
  return (S + chunk - 1) / chunk;
}

// One row's split factors, computed by one warp: c[s] = exp(m_s - M) for each split s that saw a
// key (-1 for one that did not: its partial sums may never have been written), and the returned
// total L = sum_s l_s c[s] (0 when no split saw a key). A lane per split, at most 64 splits: the
// states' loads are all in flight at once. __ldcg: the states may come from other blocks of the
// same launch (after an arrival), which the non-coherent read-only path could miss.
__device__ __forceinline__ float split_factors(const float2* __restrict__ row_ml, int splits, float* c) {
  const int lane = threadIdx.x % 32;
  float m[2], l[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int sp = lane + 32 * u;
    const float2 state = sp < splits ? __ldcg(row_ml + sp) : make_float2(-INFINITY, 0.0f);
    m[u] = state.x;
    l[u] = state.y;
  }
  const float M = warp_max(fmaxf(m[0], m[1]));
  float L = 0.0f;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const bool seen = m[u] != -INFINITY;
    const float f = seen ? __expf(m[u] - M) : 0.0f;
    L += seen ? l[u] * f : 0.0f;
    if (lane + 32 * u < splits) c[lane + 32 * u] = seen ? f : -1.0f;
  }
  return warp_sum(L);
}

// The merge of one output value, written once for flash_merge_kernel and for the kernels that
// merge splits as they read them (mla_attention.cu's W_UV product), so both give the same bits:
// four sums, of the splits s with s % 4 = 0, 1, 2, 3 in increasing s, each term fused, then
// added in that order and divided by the row's total L (split_factors).
constexpr int kMergeSums = 4;
// One split's term: o times its factor c; a split that saw no key (c < 0) adds nothing, its
// partial sums were never written.
__device__ __forceinline__ float merge_term(float sum, float o, float c) { return c >= 0.0f ? fmaf(o, c, sum) : sum; }
__device__ __forceinline__ float merge_finish(const float (&sums)[kMergeSums], float total) {
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kMergeSums; ++j) sum += sums[j];
  return total > 0.0f ? sum / total : 0.0f;
}

constexpr int kMergeWarps = kMergeSums;  // warp w takes the sum of the splits s % 4 = w

// out[row] = the merge of the row's split states; a row whose splits all saw no key is zero.
// Block (row, chunk) writes dims 32 chunk .. 32 chunk + 31. Its first warp reads the splits'
// (m, l) at once and leaves each split's factor in shared memory (split_factors); then warp w
// sums the partial outputs of splits w, w + 4, ... and the four sums meet in shared memory, in a
// fixed order. Every load of a thread is independent of the others, so the merge costs a few
// memory latencies whatever the split count (one thread per dim looping over 40 splits, twice,
// took 7 us a layer on an H200).
template <typename T>
__global__ void __launch_bounds__(kMergeWarps * 32)
    flash_merge_kernel(const float* __restrict__ part_o, const float2* __restrict__ part_ml,
                       T* __restrict__ out, int splits, int D) {
  TRACE_START
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  pdl_wait();               // when launched as a programmatic dependent: the split kernel's parts
  TRACE_WAITED
  __shared__ float s_c[kMaxDecodeSplits];  // exp(m_s - M), or -1 for a split that saw no key
  __shared__ float s_total;
  __shared__ float s_sum[kMergeWarps][32];
  const int64_t row = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) {
    const float L = split_factors(part_ml + row * splits, splits, s_c);
    if (lane == 0) s_total = L;
  }
  __syncthreads();
  const int d = blockIdx.y * 32 + lane;
  float O = 0.0f;
  if (d < D) {
#pragma unroll 4
    for (int sp = warp; sp < splits; sp += kMergeWarps) {
      const float c = s_c[sp];
      O = merge_term(O, part_o[(row * splits + sp) * D + d], c);
    }
  }
  s_sum[warp][lane] = O;
  __syncthreads();
  TRACE_END(merge)
  if (warp != 0 || d >= D) return;
  float sums[kMergeSums];
#pragma unroll
  for (int w = 0; w < kMergeSums; ++w) sums[w] = s_sum[w][lane];
  out[row * D + d] = from_float<T>(merge_finish(sums, s_total));
}

// The merge done by the last block of a launch to finish its split (after arrive_last): rows
// row0 .. row0 + ng - 1 of D values (D a multiple of 4), each from the splits' states that the
// launch's blocks wrote. A thread sums 4 dims of one row over every split, its loads issued 16
// at a time (a few L2 latencies in all, where a separate merge launch cost ~3.7 us a layer).
template <int kWarps, int kG, typename T>
__device__ void merge_splits_in_block(const float* part_o, const float2* part_ml, T* out, int64_t row0, int ng,
                                      int splits, int D) {
  __shared__ float s_c[kG][kMaxDecodeSplits];
  __shared__ float s_total[kG];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int g = warp; g < ng; g += kWarps) {
    const float L = split_factors(part_ml + (row0 + g) * splits, splits, s_c[g]);
    if (lane == 0) s_total[g] = L;
  }
  __syncthreads();
  const int quads = D / 4;
  for (int idx = threadIdx.x; idx < ng * quads; idx += blockDim.x) {
    const int g = idx / quads, d = (idx % quads) * 4;
    const float4* parts = reinterpret_cast<const float4*>(part_o + (row0 + g) * splits * D + d);
    float4 O = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 16
    for (int sp = 0; sp < splits; ++sp) {
      // Loaded whatever the split saw, so the loads stay independent; an unseen split's sums
      // (never written) are dropped by the selects.
      const float c = s_c[g][sp];
      const float4 o = __ldcg(parts + static_cast<int64_t>(sp) * (D / 4));
      O.x += c >= 0.0f ? o.x * c : 0.0f;
      O.y += c >= 0.0f ? o.y * c : 0.0f;
      O.z += c >= 0.0f ? o.z * c : 0.0f;
      O.w += c >= 0.0f ? o.w * c : 0.0f;
    }
    const float inv = s_total[g] > 0.0f ? 1.0f / s_total[g] : 0.0f;
    T* dst = out + (row0 + g) * D + d;
    dst[0] = from_float<T>(O.x * inv);
    dst[1] = from_float<T>(O.y * inv);
    dst[2] = from_float<T>(O.z * inv);
    dst[3] = from_float<T>(O.w * inv);
  }
}

// The merge's launch shape for rows of D values.
inline dim3 flash_merge_block() { return dim3(kMergeWarps * 32); }
// The most blocks a launch's z dimension takes: the attention kernels launch (batch, position)
// rows past it in several launches (a batched prompt of 128 x 512 tokens has 65536).
constexpr int kMaxGridZ = 65535;

inline dim3 flash_merge_grid(int64_t rows, int D) {
  return dim3(static_cast<unsigned>(rows), static_cast<unsigned>((D + 31) / 32));
}

}  // namespace marlin::cuda
