// The rotary embedding's per-warp work, shared by the RoPE kernels (rope.cu) and kernels that
// run a step's RoPE and cache write beside their own work (the absorbed MLA's W_UK product,
// mla_attention.cu): items are (token, head) pairs, one warp each, no block barrier.
#pragma once

#include "kernels/cuda/nn_common.cuh"
#include "marlin/tensor.h"

namespace marlin::cuda::rope_work {

// Pairs a lane loads before its first store: 4 covers rotary_dim 256 in one round trip.
constexpr int kPairs = 4;

struct HeadSet {
  void* data = nullptr;  // nullptr: absent
  int64_t token_stride = 0, head_stride = 0;
  int heads = 0;
};

// inv_freq of the lane's pairs base + lane + 32u. Loaded ahead in a loop of their own: nvcc
// would not hoist a load above the previous pair's sincosf (its slow path is a branch), which
// would chain one latency per pair.
__device__ inline void load_freqs(const float* __restrict__ inv_freq, int half, int base,
                                           int lane, float (&f)[kPairs]) {
#pragma unroll
  for (int u = 0; u < kPairs; ++u) {
    const int i = base + lane + 32 * u;
    f[u] = i < half ? inv_freq[i] : 0.0f;
  }
}

// Rotated pair (a, b) by (c, s) into x[i], x[i + half], and the same values into y (a cache row)
// when given.
template <typename T>
__device__ __forceinline__ void store_rotated(T* x, T* y, int i, int half, float a, float b, float c, float s) {
  const T lo = from_float<T>(a * c - b * s), hi = from_float<T>(b * c + a * s);
  x[i] = lo;
  x[i + half] = hi;
  if (y != nullptr) {
    y[i] = lo;
    y[i + half] = hi;
  }
}

// Half-split layout: lane owns pairs (i, i + half), so it reads both before writing both and
// no other lane touches them. All loads come before the first store: x is not __restrict__, so
// nvcc could not move a later load above a store.
template <typename T>
__device__ void rotate_half_split(T* x, T* y, float pos, const float* __restrict__ inv_freq, int half,
                                  float attention_factor, int lane) {
  for (int base = 0; base < half; base += 32 * kPairs) {
    float a[kPairs], b[kPairs], f[kPairs];
    load_freqs(inv_freq, half, base, lane, f);
#pragma unroll
    for (int u = 0; u < kPairs; ++u) {
      const int i = base + lane + 32 * u;
      if (i < half) {
        a[u] = to_float(x[i]);
        b[u] = to_float(x[i + half]);
      }
    }
#pragma unroll
    for (int u = 0; u < kPairs; ++u) {
      const int i = base + lane + 32 * u;
      if (i >= half) continue;
      float c, s;
      nn::cos_sin<T>(pos, f[u], attention_factor, c, s);
      store_rotated(x, y, i, half, a[u], b[u], c, s);
    }
  }
}

// Interleaved layout: pairs (2i, 2i + 1) in, halves (i, i + half) out, so a lane's stores land
// on other lanes' inputs. The warp stages the head's rotary part in its shared memory first;
// __syncwarp orders every lane's reads before any lane's writes.
template <typename T>
__device__ void rotate_interleaved(T* x, T* y, float pos, const float* __restrict__ inv_freq, int half,
                                   float attention_factor, int lane, float* stage) {
  const int width = 2 * half;
  float f[kPairs];
  load_freqs(inv_freq, half, 0, lane, f);  // in flight with the head's loads
  for (int base = 0; base < width; base += 32 * kPairs) {
    float r[kPairs];
#pragma unroll
    for (int u = 0; u < kPairs; ++u) {
      const int j = base + lane + 32 * u;
      if (j < width) r[u] = to_float(x[j]);
    }
#pragma unroll
    for (int u = 0; u < kPairs; ++u) {
      const int j = base + lane + 32 * u;
      if (j < width) stage[j] = r[u];
    }
  }
  __syncwarp();
  for (int base = 0; base < half; base += 32 * kPairs) {
    if (base > 0) load_freqs(inv_freq, half, base, lane, f);
#pragma unroll
    for (int u = 0; u < kPairs; ++u) {
      const int i = base + lane + 32 * u;
      if (i >= half) continue;
      float c, s;
      nn::cos_sin<T>(pos, f[u], attention_factor, c, s);
      store_rotated(x, y, i, half, stage[2 * i], stage[2 * i + 1], c, s);
    }
  }
  __syncwarp();  // the stage is free for the warp's next item
}

// Where a step's rotated keys and its values go in a KV cache [B, heads, S, dim] (any strides):
// token t of row b at position starts[b] + t, for its first counts[b] tokens (all without
// counts); positions outside [0, S) are dropped, as by attention_cache_write.
struct CacheDst {
  void* k = nullptr;  // nullptr: no cache write
  void* v = nullptr;
  int64_t k_strides[3] = {}, v_strides[3] = {};  // batch, head, position (elements)
  const int* starts = nullptr;
  const int* counts = nullptr;
  int T_len = 1, S = 0;   // tokens per row, cache positions
  int k_dim = 0, v_dim = 0;  // values per head
  // Set: the values are RMS-normalized with this weight (T, [v_dim]) on their way to the cache
  // (MLA's latent, kv_a_layernorm), as ops::rms_norm computes it.
  const void* v_norm_weight = nullptr;
  float v_norm_eps = 0.0f;
};

// y[d] = weight[d] * round(x[d] / rms(x)) for the warp's head of n values, rounded to T
// (norm.cu's RMSNorm, its sum of squares taken by one warp). A lane holds up to kNormPerLane of
// x's values and of the weight's, all requested at once: one memory latency, where a loop over
// the dims waited for each load in turn (GLM-4.7-Flash decode 3% slower than three launches).
constexpr int kNormPerLane = 16;  // n <= 512 (GLM-4.7-Flash and DeepSeek: 512); longer rows loop
template <typename T>
__device__ void rms_normalized_copy(const T* x, T* y, const T* __restrict__ weight, int n, float eps, int lane) {
  if (n > 32 * kNormPerLane) {
    float ss = 0.0f;
    for (int d = lane; d < n; d += 32) ss += to_float(x[d]) * to_float(x[d]);
    const float inv = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(n) + eps);
    for (int d = lane; d < n; d += 32) y[d] = from_float<T>(to_float(weight[d]) * nn::round_to<T>(to_float(x[d]) * inv));
    return;
  }
  float xv[kNormPerLane], wv[kNormPerLane];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormPerLane; ++i) {
    const int d = lane + 32 * i;
    xv[i] = d < n ? to_float(x[d]) : 0.0f;
    wv[i] = d < n ? to_float(weight[d]) : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < kNormPerLane; ++i) ss += xv[i] * xv[i];
  const float inv = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(n) + eps);
#pragma unroll
  for (int i = 0; i < kNormPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < n) y[d] = from_float<T>(wv[i] * nn::round_to<T>(xv[i] * inv));
  }
}

// Items are (token, head) pairs, token-major, heads of q, then k, then v; one warp each,
// grid-strided. q and k heads are rotated in place. With a cache, a k head's warp also writes
// its rotated values (and the head's unrotated dims past the rotary ones) to the key cache, and
// a v head's warp copies the head to the value cache: the step's RoPE and cache write are one
// launch (a decode step's kernel fewer per layer).
template <typename T>
__device__ void rope_items(const HeadSet& q, const HeadSet& k, const HeadSet& v, const CacheDst& cache,
                           const int32_t* __restrict__ positions, const float* __restrict__ inv_freq, int64_t items,
                           int half, bool interleaved, float attention_factor, int64_t first_warp,
                           int64_t warp_stride, float* stage) {
  const int lane = threadIdx.x % 32;
  const int total = q.heads + k.heads + v.heads;
  for (int64_t item = first_warp; item < items; item += warp_stride) {
    const int64_t t = item / total;
    const int h = static_cast<int>(item % total);
    // Field by field: selecting a whole HeadSet by a runtime value would copy it to local memory.
    const bool is_q = h < q.heads, is_k = !is_q && h < q.heads + k.heads;
    const int hh = is_q ? h : is_k ? h - q.heads : h - q.heads - k.heads;
    T* x = static_cast<T*>(is_q ? q.data : is_k ? k.data : v.data) +
           t * (is_q ? q.token_stride : is_k ? k.token_stride : v.token_stride) +
           static_cast<int64_t>(hh) * (is_q ? q.head_stride : is_k ? k.head_stride : v.head_stride);
    // This head's cache row, if it is written.
    T* y = nullptr;
    if (!is_q && cache.k != nullptr) {
      const int64_t b = t / cache.T_len;
      const int tt = static_cast<int>(t % cache.T_len);
      const int pos = cache.starts[b] + tt;
      if ((cache.counts == nullptr || tt < cache.counts[b]) && pos >= 0 && pos < cache.S) {
        const int64_t* st = is_k ? cache.k_strides : cache.v_strides;
        y = static_cast<T*>(is_k ? cache.k : cache.v) + b * st[0] + hh * st[1] + pos * st[2];
      }
    }
    if (is_q || is_k) {
      const float pos = static_cast<float>(positions[t]);
      if (interleaved)
        rotate_interleaved<T>(x, y, pos, inv_freq, half, attention_factor, lane, stage);
      else
        rotate_half_split<T>(x, y, pos, inv_freq, half, attention_factor, lane);
    }
    if (y != nullptr && !is_k && cache.v_norm_weight != nullptr) {
      rms_normalized_copy(x, y, static_cast<const T*>(cache.v_norm_weight), cache.v_dim, cache.v_norm_eps, lane);
    } else if (y != nullptr) {  // the dims no rotation wrote: a k head's past the rotary ones, all of v's
      for (int d = (is_k ? 2 * half : 0) + lane; d < (is_k ? cache.k_dim : cache.v_dim); d += 32) y[d] = x[d];
    }
  }
}

// One launch's RoPE work: rope_items over (token, head) items, with `interleaved` rotations
// staging 2 * half floats a warp in shared memory. items == 0: nothing to do.
struct RopeJob {
  HeadSet q, k, v;
  CacheDst cache;
  const int32_t* positions = nullptr;
  const float* inv_freq = nullptr;
  int64_t items = 0;
  int half = 0;
  bool interleaved = false;
  float attention_factor = 1.0f;
};

template <typename T>
__device__ __forceinline__ void run_rope_job(const RopeJob& j, int64_t first_warp, int64_t warp_stride, float* stage) {
  rope_items<T>(j.q, j.k, j.v, j.cache, j.positions, j.inv_freq, j.items, j.half, j.interleaved, j.attention_factor,
                first_warp, warp_stride, stage);
}

inline HeadSet head_set(const Tensor& x) {
  if (!x.defined()) return {};
  return {x.data_ptr(), x.strides()[0], x.strides()[1], static_cast<int>(x.size(1))};
}

// The destination of k and v in caches [B, heads, S, dim] (any strides; k_cache and v_cache may
// be views of one buffer, as MLA's latent cache is).
inline CacheDst cache_dst(const Tensor& k_cache, const Tensor& v_cache, const Tensor& starts, const Tensor& counts,
                          int64_t tokens) {
  CacheDst cache;
  cache.k = k_cache.data_ptr();
  cache.v = v_cache.data_ptr();
  for (int i = 0; i < 3; ++i) {
    cache.k_strides[i] = k_cache.strides()[i];
    cache.v_strides[i] = v_cache.strides()[i];
  }
  cache.starts = starts.data<int32_t>();
  cache.counts = counts.defined() ? counts.data<int32_t>() : nullptr;
  cache.T_len = static_cast<int>(tokens / k_cache.size(0));
  cache.S = static_cast<int>(k_cache.size(2));
  cache.k_dim = static_cast<int>(k_cache.size(3));
  cache.v_dim = static_cast<int>(v_cache.size(3));
  return cache;
}

// The job of rotating q and k (token-major rows [tokens, heads, dims]) and writing k and v to
// `cache` (cache.k == nullptr: no cache write).
inline RopeJob make_rope_job(const Tensor& q, const Tensor& k, const Tensor& v, const CacheDst& cache,
                             const Tensor& positions, const Tensor& inv_freq, bool interleaved, float attention_factor) {
  RopeJob j;
  j.q = head_set(q);
  j.k = head_set(k);
  j.v = head_set(v);
  j.cache = cache;
  j.positions = positions.data<int32_t>();
  j.inv_freq = inv_freq.data<float>();
  j.half = static_cast<int>(inv_freq.numel());
  j.interleaved = interleaved;
  j.attention_factor = attention_factor;
  const int total = j.q.heads + j.k.heads + j.v.heads;
  j.items = j.half == 0 ? 0 : q.size(0) * total;
  return j;
}

// MLA's step (mla_rope_cache_write): q_rope and k_rope rotated, k_rope to the cache's last Dr
// dims and the latent, RMS-normalized with norm_weight, to its first R.
inline RopeJob make_mla_rope_job(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent,
                                 const Tensor& positions, const Tensor& inv_freq, bool interleaved,
                                 float attention_factor, const Tensor& norm_weight, float eps, Tensor& cache,
                                 const Tensor& starts, const Tensor& counts) {
  const int64_t R = latent.size(2), Dr = k_rope.size(2);
  CacheDst dst = cache_dst(cache.narrow(3, R, Dr), cache.narrow(3, 0, R), starts, counts, q_rope.size(0));
  dst.v_norm_weight = norm_weight.data_ptr();
  dst.v_norm_eps = eps;
  return make_rope_job(q_rope, k_rope, latent, dst, positions, inv_freq, interleaved, attention_factor);
}

}  // namespace marlin::cuda::rope_work
