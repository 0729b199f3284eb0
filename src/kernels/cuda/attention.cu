// CUDA causal prefill attention: one block per (tile of 16 queries, query head), key/value tiles
// of 32 staged in shared memory as f32, an online softmax per query row held by one warp (lane j
// scores key j of the tile, then each lane accumulates its own output dims). Also the strided
// write of new keys/values into the cache.
#include <algorithm>

#include "core/cuda_check.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

constexpr int kRows = 16;          // queries per block
constexpr int kWarps = 4;          // each warp owns kRows / kWarps query rows
constexpr int kRowsPerWarp = kRows / kWarps;
constexpr int kKeys = 32;          // keys per shared-memory tile: one per lane when scoring

template <int D>
constexpr size_t prefill_smem_bytes() {
  // q rows, keys padded by one float (conflict-free when lanes read different keys), values.
  return sizeof(float) * (kRows * D + kKeys * (D + 1) + kKeys * D);
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
prefill_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               T* __restrict__ out, int T_len, int Hq, int Hkv, float scale, int window) {
  constexpr int kPerLane = (D + 31) / 32;
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + kRows * D;
  float* vs = ks + kKeys * (D + 1);

  const int h = blockIdx.y, kvh = h / (Hq / Hkv);
  const int t0 = blockIdx.x * kRows;
  const int t1 = min(t0 + kRows, T_len) - 1;  // last query of the block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int i = threadIdx.x; i < kRows * D; i += blockDim.x) {
    const int r = i / D, d = i % D;
    qs[i] = t0 + r <= t1 ? to_float(q[(static_cast<int64_t>(t0 + r) * Hq + h) * D + d]) * scale : 0.0f;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[r][i] = 0.0f;
  }

  const int lo = window > 0 ? max(0, t0 - window + 1) : 0;
  for (int j0 = lo; j0 <= t1; j0 += kKeys) {
    __syncthreads();  // the previous tile is no longer read (and q is staged on the first)
    for (int i = threadIdx.x; i < kKeys * D; i += blockDim.x) {
      const int jj = i / D, d = i % D, j = j0 + jj;
      const int64_t src = (static_cast<int64_t>(j) * Hkv + kvh) * D + d;
      ks[jj * (D + 1) + d] = j <= t1 ? to_float(k[src]) : 0.0f;
      vs[jj * D + d] = j <= t1 ? to_float(v[src]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r, t = t0 + row;
      if (t > t1) continue;  // warp-uniform
      const int j = j0 + lane;
      const bool visible = j <= t && (window <= 0 || t - j < window);
      float s = -INFINITY;
      if (visible) {
        s = 0.0f;
        const float* qr = qs + row * D;
        const float* kr = ks + lane * (D + 1);
#pragma unroll 8
        for (int d = 0; d < D; ++d) s += qr[d] * kr[d];
      }
      float tile_max = s;
#pragma unroll
      for (int o = 16; o > 0; o /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float m_new = fmaxf(m[r], tile_max);
      if (m_new == -INFINITY) continue;  // no visible key in this tile (warp-uniform)
      const float c = __expf(m[r] - m_new);
      const float p = visible ? __expf(s - m_new) : 0.0f;
      float p_sum = p;
#pragma unroll
      for (int o = 16; o > 0; o /= 2) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, o);
      l[r] = l[r] * c + p_sum;
      m[r] = m_new;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[r][i] *= c;
      for (int jj = 0; jj < kKeys; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.0f) continue;  // warp-uniform: masked key
        const float* vr = vs + jj * D;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) acc[r][i] += pj * vr[d];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int t = t0 + warp * kRowsPerWarp + r;
    if (t > t1) continue;
    const float inv = 1.0f / l[r];
    T* o = out + (static_cast<int64_t>(t) * Hq + h) * D;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) o[d] = from_float<T>(acc[r][i] * inv);
    }
  }
}

template <typename T, int D>
void launch_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int window,
                    Tensor& out, cudaStream_t stream) {
  constexpr size_t smem = prefill_smem_bytes<D>();
  // Above 48 KiB (head_dim 256) the kernel must opt in once per instantiation.
  static const bool configured = [] {
    MARLIN_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<T, D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)),
                      "attention_prefill");
    return true;
  }();
  (void)configured;
  const int T_len = static_cast<int>(q.size(0)), Hq = static_cast<int>(q.size(1));
  const dim3 grid((T_len + kRows - 1) / kRows, Hq);
  prefill_kernel<T, D><<<grid, kWarps * 32, smem, stream>>>(
      static_cast<const T*>(q.data_ptr()), static_cast<const T*>(k.data_ptr()),
      static_cast<const T*>(v.data_ptr()), static_cast<T*>(out.data_ptr()), T_len, Hq,
      static_cast<int>(k.size(1)), scale, window);
  MARLIN_CUDA_CHECK_LAUNCH("attention_prefill");
}

template <typename T>
void dispatch_head_dim(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int window,
                       Tensor& out, cudaStream_t stream) {
  switch (q.size(2)) {
    case 64: return launch_prefill<T, 64>(q, k, v, scale, window, out, stream);
    case 80: return launch_prefill<T, 80>(q, k, v, scale, window, out, stream);
    case 96: return launch_prefill<T, 96>(q, k, v, scale, window, out, stream);
    case 128: return launch_prefill<T, 128>(q, k, v, scale, window, out, stream);
    case 256: return launch_prefill<T, 256>(q, k, v, scale, window, out, stream);
    default: fail("attention_prefill", "head_dim=", q.size(2), " has no kernel");
  }
}

// cache[b, h, start + t, d] = src[b, h, t, d] for a source of any strides; raw element copies.
// With starts (device i32 [B]) each row starts at its own position, and with counts only its
// first counts[b] tokens are written (right padding is not). Positions past S are dropped.
// blockIdx.y picks the job: a step's keys and values are written by one launch.
template <typename E>
struct CacheWriteJob {
  E* cache = nullptr;
  const E* src = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};

template <typename E>
__global__ void cache_write_kernel(CacheWriteJob<E> job0, CacheWriteJob<E> job1, int64_t n,
                                   int H, int T_len, int D, int S, int start,
                                   const int* __restrict__ starts, const int* __restrict__ counts) {
  pdl_launch_dependents();
  pdl_wait();  // launched as a programmatic dependent: the new keys and values are RoPE's output
  const CacheWriteJob<E> job = blockIdx.y == 0 ? job0 : job1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i % D);
    const int t = static_cast<int>((i / D) % T_len);
    const int64_t bh = i / (static_cast<int64_t>(D) * T_len);
    const int64_t b = bh / H, h = bh % H;
    if (counts != nullptr && t >= counts[b]) continue;
    const int pos = (starts != nullptr ? starts[b] : start) + t;
    if (pos < 0 || pos >= S) continue;
    job.cache[(bh * S + pos) * D + d] = job.src[b * job.s0 + h * job.s1 + t * job.s2 + d * job.s3];
  }
}

__global__ void add_lengths_kernel(const int* __restrict__ lengths, int n,
                                   const int* __restrict__ counts, int* __restrict__ out, int B) {
  for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < B; b += gridDim.x * blockDim.x)
    out[b] = lengths[b] + (counts != nullptr ? counts[b] : n);
}

__global__ void sequence_positions_kernel(const int* __restrict__ lengths, int64_t B, int T,
                                          int* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * T;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = lengths[i / T] + static_cast<int>(i % T);
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 4096)));
}

}  // namespace

void attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t sliding_window, Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(q.device().index).handle);
  const int window = static_cast<int>(std::min<int64_t>(sliding_window, INT32_MAX));
  if (attention_prefill_gemm(q, k, v, scale, window, out)) return;
  switch (q.dtype()) {
    case DType::f32: return dispatch_head_dim<float>(q, k, v, scale, window, out, stream);
    case DType::f16: return dispatch_head_dim<__half>(q, k, v, scale, window, out, stream);
    default: return dispatch_head_dim<__nv_bfloat16>(q, k, v, scale, window, out, stream);
  }
}

namespace {

template <typename E>
CacheWriteJob<E> cache_write_job(Tensor& cache, const Tensor& src) {
  const Shape& st = src.strides();
  return {static_cast<E*>(cache.data_ptr()), static_cast<const E*>(src.data_ptr()), st[0], st[1], st[2], st[3]};
}

// Writes src into cache, and src2 into cache2 in the same launch when given (same shapes).
void launch_cache_write(Tensor& cache, const Tensor& src, Tensor* cache2, const Tensor* src2, int start,
                        const int* starts, const int* counts) {
  auto stream = static_cast<cudaStream_t>(current_stream(cache.device().index).handle);
  const int64_t n = src.numel();
  const dim3 grid(grid_for(n), cache2 != nullptr ? 2 : 1);
  const int H = static_cast<int>(src.size(1)), T_len = static_cast<int>(src.size(2));
  const int D = static_cast<int>(src.size(3)), S = static_cast<int>(cache.size(2));
  auto launch = [&](auto element) {
    using E = decltype(element);
    const CacheWriteJob<E> first = cache_write_job<E>(cache, src);
    const CacheWriteJob<E> second = cache2 != nullptr ? cache_write_job<E>(*cache2, *src2) : first;
    MARLIN_CUDA_CHECK(launch_pdl(cache_write_kernel<E>, grid, dim3(256), 0, stream, first, second, n, H, T_len, D,
                                 S, start, starts, counts),
                      "attention_cache_write");
  };
  if (cache.element_size() == 4) launch(uint32_t{});
  else launch(uint16_t{});
}

}  // namespace

void attention_cache_write(Tensor& cache, const Tensor& src, int64_t start) {
  launch_cache_write(cache, src, nullptr, nullptr, static_cast<int>(start), nullptr, nullptr);
}

void attention_cache_write(Tensor& cache, const Tensor& src, const Tensor& starts,
                           const Tensor& counts) {
  launch_cache_write(cache, src, nullptr, nullptr, 0, starts.data<int32_t>(),
                     counts.defined() ? counts.data<int32_t>() : nullptr);
}

void attention_cache_write_kv(Tensor& k_cache, const Tensor& k_new, Tensor& v_cache, const Tensor& v_new,
                              const Tensor& starts, const Tensor& counts) {
  launch_cache_write(k_cache, k_new, &v_cache, &v_new, 0, starts.data<int32_t>(),
                     counts.defined() ? counts.data<int32_t>() : nullptr);
}

void add_lengths(const Tensor& lengths, int64_t n, const Tensor& counts, const Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(out.device().index).handle);
  const int B = static_cast<int>(out.numel());
  add_lengths_kernel<<<grid_for(B), 256, 0, stream>>>(
      lengths.data<int32_t>(), static_cast<int>(n),
      counts.defined() ? counts.data<int32_t>() : nullptr, out.data<int32_t>(), B);
  MARLIN_CUDA_CHECK_LAUNCH("add_lengths");
}

void sequence_positions(const Tensor& lengths, int64_t T, const Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(out.device().index).handle);
  sequence_positions_kernel<<<grid_for(out.numel()), 256, 0, stream>>>(
      lengths.data<int32_t>(), lengths.numel(), static_cast<int>(T), out.data<int32_t>());
  MARLIN_CUDA_CHECK_LAUNCH("sequence_positions");
}

}  // namespace marlin::cuda
