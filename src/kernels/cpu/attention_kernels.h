// CPU attention kernels (attention.cpp): the reference of the CUDA ones. Arguments are checked
// by ops/attention_ops.cpp.
#pragma once

#include "marlin/tensor.h"

namespace marlin::cpu {

// q, k, v [T, H, D] -> out [T, Hq, D], causal.
void attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t sliding_window, Tensor& out);
// q [B, T, Hq, D] at the end of caches [B, Hkv, S_max, D] of lengths seq_lens (i32 [B]), of
// which new_tokens[b] (i32 [B]; undefined: T) are real queries, the rest right padding.
void attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& seq_lens, const Tensor& new_tokens, float scale,
                      int64_t sliding_window, Tensor& out);
// cache[b, h, start + t, :] = new_values[b, h, t, :] (new_values of any strides).
void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start);
// cache[b, h, starts[b] + t, :] = new_values[b, h, t, :] for t < counts[b] (counts null: all T).
void attention_cache_write(Tensor& cache, const Tensor& new_values, const int32_t* starts,
                           const int32_t* counts);
// out[b] = lengths[b] + (counts ? counts[b] : n), b < B (out may alias lengths).
void add_lengths(const int32_t* lengths, int64_t n, const int32_t* counts, int32_t* out, int64_t B);
// out[b * T + t] = lengths[b] + t.
void sequence_positions(const int32_t* lengths, int64_t B, int64_t T, int32_t* out);

}  // namespace marlin::cpu
