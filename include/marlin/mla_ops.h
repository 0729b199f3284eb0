// The attention ops of multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash), on the CPU
// and CUDA: one attention kernel for the expanded form (per-head keys and values) and the
// absorbed form (every head attends over the shared latent cache), and the per-head matrix
// product that folds W_UK into the query and applies W_UV after attention. f32 accumulation.
#pragma once

#include "marlin/tensor.h"

namespace marlin::ops {

// A key's score splits into a part without position (nope) and a rotary part (rope):
//   out[b, t, h] = sum_j softmax_j(scale * (q_nope[b,t,h] . k_nope[b,j,h] +
//                                           q_rope[b,t,h] . k_rope[b,j,h])) * v[b,j,h]
// q_nope [B, T, H, Dn], q_rope [B, T, H, Dr]; k_nope [B, S, Hn, Dn], k_rope [B, S, Hr, Dr],
// v [B, S, Hv, Dv], where each of Hn, Hr, Hv is 1 (one key row shared by every head, as the
// latent cache and MLA's k_rope are) or H. Query t of row b sits at position
// seq_lens[b] - T + t and sees keys 0..position (causal); seq_lens is i32 [B] on the tensors'
// device with T <= seq_lens[b] <= S. Every tensor may be a strided view whose last dim is
// contiguous (slices of a projection output or of the latent cache, no copies). One dtype
// (f32 on the CPU only, f16, bf16) and device. Returns [B, T, H, Dv] in q's dtype.
//   expanded: k_nope/v = kv_b_proj(latent) per head, k_rope shared (Hr = 1);
//   absorbed: q_nope = q_nope @ W_UK per head, k_nope = v = the cache's latent, k_rope = the
//   cache's rotary part (Hn = Hr = Hv = 1), Dn = Dv = kv_lora_rank.
// Right-padded rows (a batch of prompts of different lengths), as ops::attention_extend: with
// new_tokens (i32 [B] on the tensors' device, 0 <= new_tokens[b] <= min(T, seq_lens[b]),
// 1 <= seq_lens[b] <= S) only row b's first new_tokens[b] queries are real, query t at position
// seq_lens[b] - new_tokens[b] + t; the padding queries after them see the row's whole valid
// prefix (a finite result, to be ignored), so no key at or past seq_lens[b] is ever read.
// On CUDA, Dn and Dv must be at most 512 and Dr at most 64.
Tensor mla_attention(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                     const Tensor& k_rope, const Tensor& v, const Tensor& seq_lens, float scale,
                     const Tensor& new_tokens = {});

// out[m, h, :] = x[m, h, :] @ w[h] for x [M, H, K] (last dim contiguous, leading dims any
// strides) and w [H, K, N] contiguous, one dtype and device; out [M, H, N] in x's dtype.
Tensor mla_head_matmul(const Tensor& x, const Tensor& w);

// mla_head_matmul(mla_attention(...) viewed [B*T, H, Dv], w): the absorbed decode's attention and
// its W_UV product, w [H, Dv, N]; returns [B*T, H, N]. On CUDA the product's launch merges the
// attention's sequence splits itself where the absorbed kernels apply (one launch fewer a step;
// MARLIN_MLA_MERGE_IN_PRODUCT=0 keeps the merge launch), with the same result bit for bit.
Tensor mla_attention_head_matmul(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                 const Tensor& k_rope, const Tensor& v, const Tensor& seq_lens, float scale,
                                 const Tensor& w, const Tensor& new_tokens = {});

}  // namespace marlin::ops
