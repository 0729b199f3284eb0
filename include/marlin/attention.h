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
// Right-padded rows (a batch of prompts of different lengths): with new_tokens (i32 [B], on the
// tensors' device, 0 <= new_tokens[b] <= min(T, seq_lens[b])) only the first new_tokens[b]
// queries of row b are real, query t at position seq_lens[b] - new_tokens[b] + t. The padding
// queries after them see the row's whole valid prefix (a finite result, to be ignored), so no
// key past seq_lens[b] is ever read.
Tensor attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& seq_lens, float scale, int64_t sliding_window = 0,
                        const Tensor& new_tokens = {});

// Writes new [B, Hkv, T, D] (any strides, e.g. a [B, T, Hkv, D] buffer seen through
// transpose(1, 2)) into cache [B, Hkv, S_max, D] at positions [start, start + T).
void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start);
// The same at each row's own position read on the device: token t of row b goes to position
// starts[b] + t, only for t < counts[b] (right padding is never written; counts undefined: all
// T). starts and counts are i32 [B] on the cache's device; the caller has checked on the host
// that starts[b] + counts[b] <= S_max (the CUDA kernel drops positions past S_max rather than
// write out of bounds).
void attention_cache_write(Tensor& cache, const Tensor& new_values, const Tensor& starts,
                           const Tensor& counts = {});
// Keys and values of one step at once (one launch on CUDA); the same checks as above.
void attention_cache_write_kv(Tensor& k_cache, const Tensor& k_new, Tensor& v_cache,
                              const Tensor& v_new, const Tensor& starts, const Tensor& counts = {});

// ---- Per-sequence lengths on the device (KVCache bookkeeping) ----------------------------------
// Kernels rather than host values, so that a captured decode step reads its positions and
// lengths from buffers whose address never changes.

// out[b] = lengths[b] + (counts defined ? counts[b] : n); all i32 [B] on one device; out may be
// lengths itself.
void add_lengths(const Tensor& lengths, int64_t n, const Tensor& counts, const Tensor& out);
// Positions of T new tokens per row: i32 [B * T], out[b * T + t] = lengths[b] + t.
Tensor sequence_positions(const Tensor& lengths, int64_t T);

}  // namespace marlin::ops
