// CUDA attention kernels: causal prefill (attention.cu; cuBLAS for long prompts,
// attention_prefill_gemm.cu) and flash-decoding over
// the cache, split along the sequence with a reduce pass (attention_decode.cu). Arguments are
// checked by ops/attention_ops.cpp; the launchers run on the device's current stream.
#pragma once

#include "marlin/tensor.h"

namespace marlin::cuda {

void attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t sliding_window, Tensor& out);
// The tensor-core path of attention_prefill (attention_prefill_gemm.cu): prompts of at least
// kPrefillGemmMinTokens tokens in f16 or bf16; returns false, doing nothing, for the others.
constexpr int64_t kPrefillGemmMinTokens = 64;
bool attention_prefill_gemm(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            int window, Tensor& out);
// new_tokens: i32 [B] or undefined (every row has T new tokens).
void attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& seq_lens, const Tensor& new_tokens, float scale,
                      int64_t sliding_window, Tensor& out);
void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start);
void attention_cache_write(Tensor& cache, const Tensor& new_values, const Tensor& starts,
                           const Tensor& counts);
// Keys and values (same shapes) in one launch.
void attention_cache_write_kv(Tensor& k_cache, const Tensor& k_new, Tensor& v_cache, const Tensor& v_new,
                              const Tensor& starts, const Tensor& counts);
void add_lengths(const Tensor& lengths, int64_t n, const Tensor& counts, const Tensor& out);
void sequence_positions(const Tensor& lengths, int64_t T, const Tensor& out);
// RoPE on the new token's q and k, the cache append of k and v at starts[b] and attention over
// keys [0, starts[b]], in one launch (attention_decode_rope.cu); checked by ops::rope_attention_decode.
void rope_attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                           const Tensor& inv_freq, bool interleaved, float attention_factor, Tensor& k_cache,
                           Tensor& v_cache, const Tensor& starts, float scale, int64_t sliding_window,
                           Tensor& out);
// The same in clusters of up to 16 blocks on sm_90 (attention_decode_cluster.cu), where the
// split count fits; returns false, doing nothing, where it does not. rope_attention_decode tries
// it first.
bool rope_attention_decode_cluster(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                                   const Tensor& inv_freq, bool interleaved, float attention_factor,
                                   Tensor& k_cache, Tensor& v_cache, const Tensor& starts, float scale, int window,
                                   Tensor& out);
// Tests: whether rope_attention_decode may take the cluster kernel (MARLIN_ATTN_CLUSTER=0: never).
void set_attention_decode_cluster(bool enabled);
// Tests: force the number of sequence splits of the decode kernels (0 = automatic).
void set_attention_decode_splits(int splits);
int attention_decode_forced_splits();

}  // namespace marlin::cuda
