// What the GQA flash-decoding kernels share (attention_decode.cu: q ready in memory, a separate
// merge; attention_decode_rope.cu: RoPE, the cache append and the merge in the same launch): the
// block shape, the loop over a split's keys and the staging of the warps' states. A block takes
// one split of the keys for up to group_chunk<D>() query heads of one KV head, so each key and
// value is read once per group.
#pragma once

#include "kernels/cuda/flash_decode.cuh"

namespace marlin::cuda::gqa {

constexpr int kWarps = 4;
// Query heads handled together per block; fewer at head_dim 256 to bound registers.
template <int D>
constexpr int group_chunk() { return D >= 256 ? 4 : 8; }
template <int D>
constexpr int per_lane() { return (D + 31) / 32; }  // a lane holds dims lane + 32 i
// A warp requests kBatch keys and values before scoring the first: its keys then cost about one
// memory latency per batch, not one each (Llama-3.1-8B at 20 splits: ~7 keys a warp, and 13 us a
// layer when they were read one by one). Fewer at head_dim 256 to bound registers.
template <int D>
constexpr int key_batch() { return D >= 256 ? 2 : 4; }

// The warps' states of a block, merged by write_block_state.
template <int kG, int D>
struct WarpStates {
  float acc[kWarps][kG][D];
  float m[kWarps][kG], l[kWarps][kG];
};

// A warp's batch of keys and values, this lane's dims of each.
template <int D>
struct KeyBatch {
  float k[key_batch<D>()][per_lane<D>()], v[key_batch<D>()][per_lane<D>()];
};

// The batch of keys j0, j0 + kWarps, ... of a cache row at (kc, vc) ([S, D] values); rows past hi
// load row hi (valid, never scored). j0 > hi loads row hi only.
template <typename T, int D>
__device__ __forceinline__ void load_key_batch(const T* __restrict__ kc, const T* __restrict__ vc, int j0, int hi,
                                               KeyBatch<D>& batch) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < key_batch<D>(); ++u) {
    const int64_t row = static_cast<int64_t>(min(j0 + u * kWarps, hi)) * D;
#pragma unroll
    for (int i = 0; i < per_lane<D>(); ++i) {
      const int d = lane + 32 * i;
      batch.k[u][i] = d < D ? to_float(kc[row + d]) : 0.0f;
      batch.v[u][i] = d < D ? to_float(vc[row + d]) : 0.0f;
    }
  }
}

// Keys lo..hi of one (batch, KV head) cache row at (kc, vc) into this warp's states of heads
// g < ng, whose queries qr are prescaled. Warp w takes keys lo + w, lo + w + kWarps, ... a batch
// at a time; `batch` holds the first (load_key_batch at j0 = lo + w: the caller issues it early,
// before work that does not need it). (Requesting each batch's successor before scoring it, a
// second batch in registers, made Llama-3.1-8B batch 8 decode ~14% slower on an H200.) Key
// `fresh_row` (-1: none) is taken from fresh_k / fresh_v (the step's new key and value, in
// shared memory) rather than from the cache, which the same launch writes: its cache load is
// made (a valid row, so the batch's loads stay together) and discarded.
template <typename T, int D, int kG>
__device__ __forceinline__ void attend_keys(const T* __restrict__ kc, const T* __restrict__ vc, int lo, int hi,
                                            int ng, const float (&qr)[kG][per_lane<D>()], int fresh_row,
                                            const float* fresh_k, const float* fresh_v, KeyBatch<D>& batch,
                                            float (&m)[kG], float (&l)[kG], float (&acc)[kG][per_lane<D>()]) {
  constexpr int kPerLane = per_lane<D>(), kBatch = key_batch<D>();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j0 = lo + warp; j0 <= hi; j0 += kWarps * kBatch) {
    if (j0 != lo + warp) load_key_batch<T, D>(kc, vc, j0, hi, batch);
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
      if (min(j0 + u * kWarps, hi) == fresh_row)  // warp-uniform
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) {
            batch.k[u][i] = fresh_k[d];
            batch.v[u][i] = fresh_v[d];
          }
        }
    // Every head's partial scores of the batch, then one update a head (update_heads_batch).
    float s[kG][kBatch];
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        s[g][u] = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i)
          if (g < ng) s[g][u] += qr[g][i] * batch.k[u][i];
      }
    update_heads_batch(s, ng, (hi - j0) / kWarps + 1, m, l, acc, batch.v);
  }
}

// This warp's states into the block's shared WarpStates (a barrier must follow).
template <int kG, int D>
__device__ __forceinline__ void stage_states(WarpStates<kG, D>& st, const float (&m)[kG], const float (&l)[kG],
                                             const float (&acc)[kG][per_lane<D>()]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    if (lane == 0) {
      st.m[warp][g] = m[g];
      st.l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < per_lane<D>(); ++i) {
      const int d = lane + 32 * i;
      if (d < D) st.acc[warp][g][d] = acc[g][i];
    }
  }
}

// Empty states of kG heads: max -inf, sums zero.
template <int kG, int kPerLane>
__device__ __forceinline__ void clear_states(float (&m)[kG], float (&l)[kG], float (&acc)[kG][kPerLane]) {
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[g][i] = 0.0f;
  }
}

}  // namespace marlin::cuda::gqa
