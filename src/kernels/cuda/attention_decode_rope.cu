// A decode step's attention in one launch: RoPE on the new token's q and k, the cache append of
// its k and v, flash-decoding over the cache, and the merge of the splits. Separately these are
// three launches a layer (rope_cache_write, the split kernel, the merge: together ~17 us of a
// Llama-3.1-8B FP4 layer's ~74 on an H200). Here every block rotates its own query heads (a few
// sincosf a lane); the blocks whose split holds the new position rotate its key themselves and
// use it from shared memory (one of them writes it and the value to the cache), so no block
// reads what another writes; and the last block of a head group to finish merges the splits'
// states. The rotation and the merge still sit on the launch's critical path, so only the launch
// edges go: Llama-3.1-8B decode ~2% faster at batch 1, the same at batch 8 (docs/PERFORMANCE.md).
// On sm_90 short caches and single rows go to attention_decode_cluster.cu first, whose splits
// merge in a thread-block cluster; this kernel takes the rest (batches, long caches, head_dim 80, 96).
#include <algorithm>

#include "core/cuda_check.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gqa_decode.cuh"
#include "kernels/cuda/gqa_rope.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/nn_common.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using gqa::group_chunk;
using gqa::NewToken;
using gqa::rotate_head;
using gqa::kWarps;
using gqa::per_lane;

// L2 prefetch of the key and value rows [lo, hi) a split will read, given the start it would see
// (the split arithmetic of rope_decode_kernel), one 128-byte line a thread at a time.
template <typename T, int D>
__device__ __forceinline__ void prefetch_split_rows(const T* kc, const T* vc, int start, int S, int window,
                                                    int splits, int split) {
  const int pos = min(max(start, 0), S - 1);
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int chunk = (pos - first + splits) / splits;
  const int lo = first + split * chunk, hi = min(pos - 1, lo + chunk - 1);  // the new row is not there yet
  if (lo > hi) return;
  constexpr int kLineElems = 128 / sizeof(T);
  const int lines = ((hi - lo + 1) * D + kLineElems - 1) / kLineElems;
  const int64_t base = static_cast<int64_t>(lo) * D;
  for (int i = threadIdx.x; i < 2 * lines; i += blockDim.x) {
    const T* p = (i < lines ? kc : vc) + base + static_cast<int64_t>(i < lines ? i : i - lines) * kLineElems;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
  }
}

// Grid (splits, Hkv x head chunks, B), kWarps warps. The new token of row b goes to position
// starts[b] and sees keys [first, starts[b]]; starts outside [0, S) (the host checks them) are
// clamped and then nothing is written.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1)
rope_decode_kernel(NewToken<T> tok, const int* __restrict__ starts, const T* kc, const T* vc, T* k_cache_out, T* v_cache_out, T* __restrict__ out,
                   float* part_o, float2* part_ml, unsigned* counters, int Hq, int Hkv, int S, float scale,
                   int window, int splits) {
  TRACE_START
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  constexpr int kPerLane = per_lane<D>(), kG = group_chunk<D>();
  const int group = Hq / Hkv, head_chunks = (group + kG - 1) / kG;
  const int split = blockIdx.x, head_chunk = blockIdx.y % head_chunks;
  const int kvh = blockIdx.y / head_chunks, g0 = head_chunk * kG;
  const int ng = min(kG, group - g0);
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t cache_base = (static_cast<int64_t>(b) * Hkv + kvh) * S * D;
  // This split's key and value rows as the positions stood at the previous step, asked into L2
  // while the previous kernel finishes (a hint only: the rows are read after the wait, so a stale
  // start or a row still being written costs nothing but the request).
  prefetch_split_rows<T, D>(kc + cache_base, vc + cache_base, starts[b], S, window, splits, split);
  pdl_wait();  // launched as a programmatic dependent: q, k and v are the GEMM's output
  TRACE_WAITED

  const int start = ld_dependent_s32(starts + b);  // not the prefetch's read, which nvcc would reuse
  const int pos = min(max(start, 0), S - 1);
  const int fresh_row = start == pos ? pos : -1;
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int chunk = (pos - first + splits) / splits;  // ceil(keys / splits)
  const int lo = first + split * chunk, hi = min(pos, lo + chunk - 1);  // lo > hi: no key here
  const bool has_fresh = fresh_row >= lo && fresh_row <= hi;
  const int64_t q_row0 = static_cast<int64_t>(b) * Hq + kvh * group + g0;
  // The first batch of keys is requested now: it needs neither the rotation nor the new key.
  gqa::KeyBatch<D> batch;
  gqa::load_key_batch<T, D>(kc + cache_base, vc + cache_base, lo + warp, hi, batch);

  __shared__ float s_stage[kWarps][D];
  __shared__ float s_q[kG][D];
  __shared__ float s_fresh[2][D];  // the new key (rotated, as the cache holds it) and value
  float c[kPerLane], s[kPerLane];
  gqa::lane_cos_sin<T, D, false>(tok, tok.positions[b], c, s);
  float r[kPerLane];
  for (int g = warp; g < ng; g += kWarps) {
    rotate_head<T, D>(tok.q + b * tok.q_token + (kvh * group + g0 + g) * tok.q_head, tok.half, tok.interleaved,
                      c, s, s_stage[warp], r);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < D) s_q[g][lane + 32 * i] = r[i] * scale;
  }
  if (has_fresh && warp == kWarps - 1) {
    rotate_head<T, D>(tok.k + b * tok.k_token + kvh * tok.k_head, tok.half, tok.interleaved, c, s,
                      s_stage[warp], r);
    const T* v = tok.v + b * tok.v_token + kvh * tok.v_head;
    const int64_t row = ((static_cast<int64_t>(b) * Hkv + kvh) * S + fresh_row) * D;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d >= D) continue;
      const T vd = v[d];
      s_fresh[0][d] = r[i];
      s_fresh[1][d] = to_float(vd);
      if (head_chunk == 0) {  // one writer per (row, KV head)
        k_cache_out[row + d] = from_float<T>(r[i]);
        v_cache_out[row + d] = vd;
      }
    }
  }
  __syncthreads();

  float qr[kG][kPerLane], acc[kG][kPerLane], m[kG], l[kG];
  gqa::clear_states(m, l, acc);
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      qr[g][i] = g < ng && d < D ? s_q[g][d] : 0.0f;
    }
  gqa::attend_keys<T, D, kG>(kc + cache_base, vc + cache_base, lo, hi, ng, qr, has_fresh ? fresh_row : -1,
                             s_fresh[0], s_fresh[1], batch, m, l, acc);

  __shared__ gqa::WarpStates<kG, D> st;
  gqa::stage_states(st, m, l, acc);
  __syncthreads();
  // An empty split (lo > hi) writes its empty state too: the last block merges every split.
  write_block_state<kWarps, kG>(st.m, st.l, &st.acc[0][0][0], D, ng, D, q_row0, splits, split, out, part_o,
                                part_ml);
  if (splits == 1 || !arrive_last(&counters[static_cast<int64_t>(b) * gridDim.y + blockIdx.y], splits)) {
    TRACE_END(attention)
    return;
  }
  merge_splits_in_block<kWarps, kG>(part_o, part_ml, out, q_row0, ng, splits, D);
  TRACE_END(merge)
}

template <typename T, int D>
void launch(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
            bool interleaved, float attention_factor, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
            float scale, int window, Tensor& out) {
  constexpr int kG = group_chunk<D>();
  const int B = static_cast<int>(q.size(0)), Hq = static_cast<int>(q.size(1));
  const int Hkv = static_cast<int>(k_cache.size(1)), S = static_cast<int>(k_cache.size(2));
  const int head_chunks = (Hq / Hkv + kG - 1) / kG;
  const int device = q.device().index;
  const int splits = decode_split_count(attention_decode_forced_splits(), Hkv * head_chunks * B, S,
                                        multiprocessor_count(device));
  const int64_t rows = static_cast<int64_t>(B) * Hq;
  Tensor part_o, part_ml;
  unsigned* counters = nullptr;
  if (splits > 1) {
    part_o = Tensor::empty({rows * splits * D}, DType::f32, q.device());
    part_ml = Tensor::empty({rows * splits * 2}, DType::f32, q.device());
    // One per (row, KV head, head chunk).
    counters = arrival_counters(CounterUser::gqa_decode, device, static_cast<int64_t>(B) * Hkv * head_chunks);
  }
  const auto tok = gqa::make_new_token<T>(q, k, v, positions, inv_freq, interleaved, attention_factor);
  T* kcache = static_cast<T*>(k_cache.data_ptr());
  T* vcache = static_cast<T*>(v_cache.data_ptr());
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  MARLIN_CUDA_CHECK(launch_pdl(rope_decode_kernel<T, D>, dim3(splits, Hkv * head_chunks, B), dim3(kWarps * 32), 0,
                               stream, tok, starts.data<int32_t>(), kcache, vcache, kcache, vcache,
                               static_cast<T*>(out.data_ptr()), splits > 1 ? part_o.data<float>() : nullptr,
                               splits > 1 ? reinterpret_cast<float2*>(part_ml.data<float>()) : nullptr, counters,
                               Hq, Hkv, S, scale, window, splits),
                    "rope_attention_decode");
}

}  // namespace

void rope_attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                           const Tensor& inv_freq, bool interleaved, float attention_factor, Tensor& k_cache,
                           Tensor& v_cache, const Tensor& starts, float scale, int64_t sliding_window,
                           Tensor& out) {
  const int window = static_cast<int>(std::min<int64_t>(sliding_window, INT32_MAX));
  if (rope_attention_decode_cluster(q, k, v, positions, inv_freq, interleaved, attention_factor, k_cache, v_cache,
                                    starts, scale, window, out))
    return;
  nn::dispatch_float(q.dtype(), "rope_attention_decode", [&](auto tag) {
    using T = decltype(tag);
    switch (q.size(2)) {
#define MARLIN_ROPE_DECODE_D(D)                                                                              \
  case D:                                                                                                    \
    return launch<T, D>(q, k, v, positions, inv_freq, interleaved, attention_factor, k_cache, v_cache, starts, \
                        scale, window, out);
      MARLIN_ROPE_DECODE_D(64)
      MARLIN_ROPE_DECODE_D(80)
      MARLIN_ROPE_DECODE_D(96)
      MARLIN_ROPE_DECODE_D(128)
      MARLIN_ROPE_DECODE_D(256)
#undef MARLIN_ROPE_DECODE_D
      default: fail("rope_attention_decode", "head_dim=", q.size(2), " has no kernel");
    }
  });
}

}  // namespace marlin::cuda
