// Attention over query, key and value heads: causal prefill, decode over a KV cache, and a few
// new tokens at the end of a cached sequence. GQA (Hq a multiple of Hkv); f16, bf16 or f32
// inputs with f32 accumulation and an online softmax; head_dim 64, 80, 96, 128 or 256.
#pragma once

#include "marlin/tensor.h"

namespace marlin::ops {

// Key j is visible to a query at position i when j <= i and, with sliding_window W > 0, also
// i - j < W (the W most recent keys, the query's own included: Transformers' definition).

// out[t, h] = softmax(scale * q[t, h] . k[0..t, h / G]) v[0..t, h / G] for q [T, Hq, D],
// k and v [T, Hkv, D], all contiguous with one dtype and device; out [T, Hq, D] in q's dtype.
Tensor attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         int64_t sliding_window = 0);

// One new token per sequence: q [B, Hq, D] against k_cache and v_cache [B, Hkv, S_max, D] whose
// first seq_lens[b] positions are filled (the new token's key and value included); seq_lens is
// i32 [B] on the tensors' device, 1 <= seq_lens[b] <= S_max. Returns [B, Hq, D].
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& seq_lens, float scale, int64_t sliding_window = 0);

// T new tokens at the end of each cached sequence: q [B, T, Hq, D], query t of sequence b at
// position seq_lens[b] - T + t (seq_lens counts the new tokens, so seq_lens[b] >= T). Returns
// [B, T, Hq, D]. attention_decode is the case T = 1.
Tensor attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& seq_lens, float scale, int64_t sliding_window = 0);

// Writes new [B, Hkv, T, D] (any strides, e.g. a [B, T, Hkv, D] buffer seen through
// transpose(1, 2)) into cache [B, Hkv, S_max, D] at positions [start, start + T).
void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start);

}  // namespace marlin::ops
