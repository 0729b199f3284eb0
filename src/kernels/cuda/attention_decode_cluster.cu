// A decode step's GQA attention in one launch whose splits meet in a thread-block cluster
// (sm_90): RoPE on the new token's q and k, the cache append, flash-decoding over the cache and
// the merge of the splits, as attention_decode_rope.cu does, with two differences that take
// memory round trips off the launch's critical path:
// - A warp loads its first keys and values into registers before griddepcontrol.wait, while the
//   QKV GEMM before it still runs. Only this launch writes the step's cache row (it takes that
//   key and value from shared memory, not from the cache), and every row below it was written by
//   a launch of an earlier step; the position those loads used is read before the wait too, so it
//   is read again after it, and a block whose position moved loads its keys again.
// - The splits of a head group are the blocks of one cluster: each leaves its merged state in
//   its shared memory, and after a cluster barrier each block merges a slice of the outputs from
//   all of them (distributed shared memory). The global path writes every split's partial
//   state, arrives at a counter (a release fence) and has the last block read them all back: two
//   L2 round trips and a fence after the splits' work, ~4.5 us of a Llama-3.1-8B layer on an H200.
// It takes caches short enough that a warp's preload holds its keys at 16 splits or fewer (640
// positions of Llama-3.1-8B: 16 splits of 40 keys, 10 a warp), single rows up to 4096 positions,
// and batches whose blocks stay few (launch); the others go the global way. Llama-3.1-8B FP4
// batch 1 on an H200: 418 against 395 tok/s (docs/PERFORMANCE.md, fifteenth session).
#include <cooperative_groups.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gqa_rope.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

namespace cg = cooperative_groups;
using gqa::kWarps;
using gqa::NewToken;

constexpr int kMaxClusterSplits = 16;  // a non-portable cluster size; sm_90 schedules up to 16
// Query heads a block. Llama-3.1-8B FP4 batch 1 (group 4) on an H200 decoded at 418 tok/s with
// 2 (16 splits, 256 blocks), 394 with 4 (16 splits, 128 blocks: a warp's 10 keys a chain of
// dependent instructions, ~3.7 us) and 388 with 1 (14 splits, 448 blocks); the global path 395.
constexpr int kHeads = 2;

// This lane's D / 32 consecutive values of one cache row, as loaded (16-, 32-bit words).
template <typename T, int D>
struct LaneRow {
  static constexpr int kValues = D / 32;
  static constexpr int kWords = kValues * static_cast<int>(sizeof(T)) / 4;
  uint32_t w[kWords];
};

// Keys a warp loads before the wait: ~48-64 registers of raw values for keys and values.
template <typename T, int D>
constexpr int preload_keys() {
  constexpr int words = LaneRow<T, D>::kWords;
  return words <= 1 ? 16 : words == 2 ? 12 : words == 4 ? 8 : 4;
}
// Keys scored together (one softmax update): fewer at head_dim 256 to bound registers.
template <int D>
constexpr int sub_batch() { return D >= 256 ? 2 : 4; }

template <typename T, int D>
__device__ __forceinline__ void load_lane_row(const T* row, LaneRow<T, D>& r) {
  constexpr int W = LaneRow<T, D>::kWords;
  const T* p = row + (threadIdx.x % 32) * (D / 32);
  if constexpr (W == 1) {
    r.w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (W == 2) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    r.w[0] = x.x;
    r.w[1] = x.y;
  } else {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 x = reinterpret_cast<const uint4*>(p)[i];
      r.w[4 * i] = x.x;
      r.w[4 * i + 1] = x.y;
      r.w[4 * i + 2] = x.z;
      r.w[4 * i + 3] = x.w;
    }
  }
}

template <typename T, int D>
__device__ __forceinline__ void lane_row_floats(const LaneRow<T, D>& r, float (&f)[D / 32]) {
#pragma unroll
  for (int i = 0; i < LaneRow<T, D>::kWords; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      f[i] = __uint_as_float(r.w[i]);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      f[2 * i] = __uint_as_float(r.w[i] << 16);  // little endian: the lower half is the lower dim
      f[2 * i + 1] = __uint_as_float(r.w[i] & 0xffff0000u);
    } else {
      __half2 h;
      memcpy(&h, &r.w[i], 4);
      const float2 x = __half22float2(h);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
}

// The keys [lo, hi] a split of the row sees once the new token sits at `start` (the split
// arithmetic of rope_decode_kernel); lo > hi: none.
struct SplitKeys {
  int pos, lo, hi;
};
__device__ __forceinline__ SplitKeys split_keys(int start, int S, int window, int splits, int split) {
  const int pos = min(max(start, 0), S - 1);
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int chunk = (pos - first + splits) / splits;  // ceil(keys / splits)
  const int lo = first + split * chunk;
  return {pos, lo, min(pos, lo + chunk - 1)};
}

// A warp's preloaded keys lo + warp + kWarps u, u < kPre (rows past hi load row hi: valid,
// never scored).
template <typename T, int D, int kPre>
__device__ __forceinline__ void preload(const T* kc, const T* vc, const SplitKeys& keys, LaneRow<T, D> (&k)[kPre],
                                        LaneRow<T, D> (&v)[kPre]) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int u = 0; u < kPre; ++u) {
    const int64_t row = static_cast<int64_t>(max(min(keys.lo + warp + kWarps * u, keys.hi), 0)) * D;
    load_lane_row<T, D>(kc + row, k[u]);
    load_lane_row<T, D>(vc + row, v[u]);
  }
}

// Per block: the warps' states, then the block's merged state, which the cluster's blocks read.
template <int D>
struct ClusterSmem {
  float q[kHeads][D];
  float stage[kWarps][D];
  float fresh[2][D];  // the new key (rotated, as the cache holds it) and value
  float acc[kWarps][kHeads][D];
  float m[kWarps][kHeads], l[kWarps][kHeads];
  float block_o[kHeads][D];
  float block_m[kHeads], block_l[kHeads];
};

// Grid (splits, Hkv x head chunks, B) in clusters of (splits, 1, 1), kWarps warps a block.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1)
rope_decode_cluster_kernel(NewToken<T> tok, const int* __restrict__ starts, const T* kc, const T* vc,
                           T* k_cache_out, T* v_cache_out, T* __restrict__ out, int Hq, int Hkv, int S, float scale,
                           int window) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  TRACE_START
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  constexpr int kPL = D / 32, kPre = preload_keys<T, D>(), kSub = sub_batch<D>();
  static_assert(kPre % kSub == 0, "whole sub-batches");
  static_assert(kHeads <= kWarps, "a warp rotates one query head");
  const int splits = gridDim.x, split = blockIdx.x;
  const int group = Hq / Hkv, head_chunks = (group + kHeads - 1) / kHeads;
  const int head_chunk = blockIdx.y % head_chunks, kvh = blockIdx.y / head_chunks;
  const int g0 = head_chunk * kHeads, ng = min(kHeads, group - g0);
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t cache_base = (static_cast<int64_t>(b) * Hkv + kvh) * S * D;
  const T* kb = kc + cache_base;
  const T* vb = vc + cache_base;

  // The first keys and the rotation's cos and sin, from the row's slot and position as read
  // before the wait (see the file's comment); the rotation's frequencies are constants.
  const int hint = starts[b], position_hint = tok.positions[b];
  SplitKeys keys = split_keys(hint, S, window, splits, split);
  LaneRow<T, D> pk[kPre], pv[kPre];
  preload<T, D, kPre>(kb, vb, keys, pk, pv);
  float c[kPL], s[kPL];
  gqa::lane_cos_sin<T, D, true>(tok, position_hint, c, s);
  pdl_wait();  // launched as a programmatic dependent: q, k, v and starts are earlier launches' output
  TRACE_WAITED
  // Every load of the new token's values and of the slot and position first (one round trip):
  // warp g < ng rotates query head g0 + g, the last warp also the new key.
  float r[kPL], rk[kPL], rv[kPL];
  const bool has_head = warp < ng;
  if (has_head) gqa::load_head<T, D, true>(tok.q + b * tok.q_token + (kvh * group + g0 + warp) * tok.q_head, r);
  if (warp == kWarps - 1) {
    gqa::load_head<T, D, true>(tok.k + b * tok.k_token + kvh * tok.k_head, rk);
    gqa::load_head<T, D, true>(tok.v + b * tok.v_token + kvh * tok.v_head, rv);
  }
  // The slot re-read for certain (pdl.cuh): a plain read of the __restrict__ pointer is the
  // hint's, which nvcc reused (SASS), and a stale hint would then never be caught.
  const int start = ld_dependent_s32(starts + b), position = tok.positions[b];
  if (position != position_hint) gqa::lane_cos_sin<T, D, true>(tok, position, c, s);  // block-uniform
  if (start != hint) {
    keys = split_keys(start, S, window, splits, split);
    preload<T, D, kPre>(kb, vb, keys, pk, pv);
  }
  const int fresh_row = start == keys.pos ? keys.pos : -1;
  const bool has_fresh = fresh_row >= keys.lo && fresh_row <= keys.hi;

  __shared__ ClusterSmem<D> sm;
  if (has_head) {
    gqa::rotate_values<T, D, true>(tok.half, tok.interleaved, c, s, sm.stage[warp], r);
#pragma unroll
    for (int i = 0; i < kPL; ++i) sm.q[warp][lane * kPL + i] = r[i] * scale;
  }
  if (has_fresh && warp == kWarps - 1) {
    gqa::rotate_values<T, D, true>(tok.half, tok.interleaved, c, s, sm.stage[warp], rk);
    const int64_t row = cache_base + static_cast<int64_t>(fresh_row) * D;
#pragma unroll
    for (int i = 0; i < kPL; ++i) {
      const int d = lane * kPL + i;
      sm.fresh[0][d] = rk[i];
      sm.fresh[1][d] = rv[i];
      if (head_chunk == 0) {  // one writer per (row, KV head)
        k_cache_out[row + d] = from_float<T>(rk[i]);
        v_cache_out[row + d] = from_float<T>(rv[i]);  // exact: rv holds a T's value
      }
    }
  }
  __syncthreads();

  float qr[kHeads][kPL], acc[kHeads][kPL], m[kHeads], l[kHeads];
  gqa::clear_states(m, l, acc);
#pragma unroll
  for (int g = 0; g < kHeads; ++g)
#pragma unroll
    for (int i = 0; i < kPL; ++i) qr[g][i] = g < ng ? sm.q[g][lane * kPL + i] : 0.0f;
  // Keys j0, j0 + kWarps, ... (kSub of them, rows k and v) into the states.
  auto score = [&](int j0, const LaneRow<T, D>* k, const LaneRow<T, D>* v) {
    float kf[kSub][kPL], vf[kSub][kPL], sc[kHeads][kSub];
#pragma unroll
    for (int u = 0; u < kSub; ++u) {
      if (min(j0 + u * kWarps, keys.hi) == fresh_row) {  // warp-uniform: the new key, not the cache's
#pragma unroll
        for (int i = 0; i < kPL; ++i) {
          kf[u][i] = sm.fresh[0][lane * kPL + i];
          vf[u][i] = sm.fresh[1][lane * kPL + i];
        }
      } else {
        lane_row_floats<T, D>(k[u], kf[u]);
        lane_row_floats<T, D>(v[u], vf[u]);
      }
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        sc[g][u] = 0.0f;
#pragma unroll
        for (int i = 0; i < kPL; ++i) sc[g][u] += qr[g][i] * kf[u][i];
      }
    }
    update_heads_batch(sc, ng, (keys.hi - j0) / kWarps + 1, m, l, acc, vf);
  };
#pragma unroll
  for (int u0 = 0; u0 < kPre; u0 += kSub) {
    const int j0 = keys.lo + warp + kWarps * u0;
    if (j0 <= keys.hi) score(j0, pk + u0, pv + u0);
  }
  for (int j0 = keys.lo + warp + kWarps * kPre; j0 <= keys.hi; j0 += kWarps * kSub) {
    LaneRow<T, D> k[kSub], v[kSub];
#pragma unroll
    for (int u = 0; u < kSub; ++u) {
      const int64_t row = static_cast<int64_t>(min(j0 + u * kWarps, keys.hi)) * D;
      load_lane_row<T, D>(kb + row, k[u]);
      load_lane_row<T, D>(vb + row, v[u]);
    }
    score(j0, k, v);
  }

  // The block's state: its warps' states merged (max, then the rescaled sums).
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (lane == 0) {
      sm.m[warp][g] = m[g];
      sm.l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < kPL; ++i) sm.acc[warp][g][lane * kPL + i] = acc[g][i];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < ng * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm.m[w][g]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(sm.m[w][g] - M);
        L += sm.l[w][g] * f;
        O += sm.acc[w][g][d] * f;
      }
    }
    sm.block_o[g][d] = O;
    if (d == 0) {
      sm.block_m[g] = M;
      sm.block_l[g] = L;
    }
  }
  // The cluster's states: block `split` merges outputs [split per, (split + 1) per) of the
  // group's ng * D, reading every block's state in rank order (deterministic).
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's state is written (release / acquire at cluster scope)
  const int64_t q_row0 = static_cast<int64_t>(b) * Hq + kvh * group + g0;
  const int per = (ng * D + splits - 1) / splits;
  for (int idx = split * per + threadIdx.x; idx < min(ng * D, (split + 1) * per); idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float ms[kMaxClusterSplits], ls[kMaxClusterSplits], os[kMaxClusterSplits];
    float M = -INFINITY;
#pragma unroll
    for (int x = 0; x < kMaxClusterSplits; ++x) {  // all loads first, unconditional: one DSMEM latency
      const ClusterSmem<D>* other = cluster.map_shared_rank(&sm, x < splits ? x : 0);
      ms[x] = other->block_m[g];
      ls[x] = other->block_l[g];
      os[x] = other->block_o[g][d];
    }
#pragma unroll
    for (int x = 0; x < kMaxClusterSplits; ++x)
      if (x >= splits) ms[x] = -INFINITY;  // a rank past the cluster: its loads were rank 0's
#pragma unroll
    for (int x = 0; x < kMaxClusterSplits; ++x) M = fmaxf(M, ms[x]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int x = 0; x < kMaxClusterSplits; ++x) {
        const float f = ms[x] == -INFINITY ? 0.0f : __expf(ms[x] - M);  // a split with no key adds nothing
        L += ls[x] * f;
        O += os[x] * f;
      }
    }
    out[(q_row0 + g) * D + d] = from_float<T>(L > 0.0f ? O / L : 0.0f);
  }
  // No block leaves while another may still read its shared memory. Relaxed: the outputs just
  // written need no ordering at cluster scope (a release would wait for their stores).
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
  TRACE_END(attention)
#endif
}

// Whether clusters of `size` blocks of `kernel` (kWarps warps) can be resident on `device`.
bool clusters_fit(const void* kernel, int size, int device) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, size, device);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  int major = 0;
  MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "rope_attention_decode");
  bool fits = false;
  if (major >= 9) {
    MARLIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                      "rope_attention_decode");
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(size);
    config.blockDim = dim3(kWarps * 32);
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = size;
    attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    int clusters = 0;
    fits = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess && clusters > 0;
    (void)cudaGetLastError();  // a refused size is an answer, not an error
  }
  known[key] = fits;
  return fits;
}

bool g_cluster_enabled = env_int("MARLIN_ATTN_CLUSTER", 1) != 0;

template <typename T, int D>
bool launch(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
            bool interleaved, float attention_factor, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
            float scale, int window, Tensor& out) {
  const int B = static_cast<int>(q.size(0)), Hq = static_cast<int>(q.size(1));
  const int Hkv = static_cast<int>(k_cache.size(1)), S = static_cast<int>(k_cache.size(2));
  const int head_chunks = (Hq / Hkv + kHeads - 1) / kHeads;
  const int device = q.device().index;
  int splits = attention_decode_forced_splits();
  if (splits <= 0) {
    // The count may depend on S only: a captured graph replays it as the sequences grow. At least
    // enough splits that a warp's preload holds all its keys at the cache's full length, where 16
    // do; a single row also takes caches whose warps then score up to 64 keys each, the rest
    // after the wait (Llama-3.1-8B FP4 batch 1 in a 4096-position cache, H200: 417.88 against
    // 397.40 tok/s from a 512-token prompt, 331.18 against 322.74 from 3840). And not many more
    // blocks than the global path would launch: with 4 and 8 rows that path was as fast or faster
    // (8 rows on 3 cluster splits: 1948.50 against 2147.16 tok/s; 14 splits ~15% slower).
    constexpr int kWarpKeys = kWarps * preload_keys<T, D>();
    const int sms = multiprocessor_count(device), group = Hq / Hkv;
    const int least = (S + kWarpKeys - 1) / kWarpKeys;
    const int warp_keys_at_most_splits = (S + kMaxClusterSplits * kWarps - 1) / (kMaxClusterSplits * kWarps);
    if (least > kMaxClusterSplits && !(B == 1 && warp_keys_at_most_splits <= 64)) return false;
    const int global_rows = Hkv * ((group + gqa::group_chunk<D>() - 1) / gqa::group_chunk<D>()) * B;
    const int global_blocks = decode_split_count(0, global_rows, S, sms) * global_rows;
    splits = std::min(kMaxClusterSplits, std::max(least, decode_split_count(0, Hkv * head_chunks * B, S, sms)));
    if (splits * Hkv * head_chunks * B > std::max(global_blocks, 4 * sms)) return false;
  }
  if (splits > kMaxClusterSplits) return false;
  const auto kernel = rope_decode_cluster_kernel<T, D>;
  if (!clusters_fit(reinterpret_cast<const void*>(kernel), splits, device)) return false;
  T* kcache = static_cast<T*>(k_cache.data_ptr());
  T* vcache = static_cast<T*>(v_cache.data_ptr());
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(splits, Hkv * head_chunks, B);
  config.blockDim = dim3(kWarps * 32);
  config.stream = static_cast<cudaStream_t>(current_stream(device).handle);
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = splits;
  attributes[0].val.clusterDim.y = attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attributes;
  config.numAttrs = pdl_enabled(device) ? 2 : 1;
  MARLIN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel,
                                       gqa::make_new_token<T>(q, k, v, positions, inv_freq, interleaved,
                                                              attention_factor),
                                       starts.data<int32_t>(), static_cast<const T*>(kcache),
                                       static_cast<const T*>(vcache), kcache, vcache, static_cast<T*>(out.data_ptr()),
                                       Hq, Hkv, S, scale, window),
                    "rope_attention_decode");
  return true;
}

}  // namespace

void set_attention_decode_cluster(bool enabled) { g_cluster_enabled = enabled; }

bool rope_attention_decode_cluster(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                                   const Tensor& inv_freq, bool interleaved, float attention_factor,
                                   Tensor& k_cache, Tensor& v_cache, const Tensor& starts, float scale, int window,
                                   Tensor& out) {
  if (!g_cluster_enabled) return false;
  // Each lane loads its D / 32 values of a row with vector loads: 16-byte aligned caches.
  const auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  if (!aligned(k_cache) || !aligned(v_cache)) return false;
  bool done = false;
  nn::dispatch_float(q.dtype(), "rope_attention_decode", [&](auto tag) {
    using T = decltype(tag);
    const auto go = [&](auto head_dim) {
      done = launch<T, decltype(head_dim)::value>(q, k, v, positions, inv_freq, interleaved, attention_factor,
                                                  k_cache, v_cache, starts, scale, window, out);
    };
    switch (q.size(2)) {  // a lane's D / 32 values a row: head_dim 64, 128, 256 (the others: false)
      case 64: return go(std::integral_constant<int, 64>{});
      case 128: return go(std::integral_constant<int, 128>{});
      case 256: return go(std::integral_constant<int, 256>{});
      default: return;
    }
  });
  return done;
}

}  // namespace marlin::cuda
