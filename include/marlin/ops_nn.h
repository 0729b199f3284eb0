// The building-block ops of the decoder layers (norms, rotary embeddings, activations,
// embedding lookup, residual add, softmax), each on the CPU and CUDA, chosen by the tensors'
// device. Activations are f32, f16 or bf16; every op computes in f32 and rounds where
// Transformers rounds, so that a bf16 model matches its Transformers run.
//
// Tensors of shape [..., N] may have strided leading dims (a head slice of a fused QKV output)
// as long as the last dim is contiguous. An optional `out` is written instead of a new tensor
// (preallocated buffers for CUDA graphs); it may be the input itself.
#pragma once

#include <cstdint>

#include "marlin/tensor.h"

namespace marlin {
struct ModelConfig;
struct RopeScaling;
}  // namespace marlin

namespace marlin::ops {

// ---- Normalization ----------------------------------------------------------------------------

// Llama/Qwen RMSNorm over the last dim: weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), as
// Transformers' LlamaRMSNorm (normalized value rounded to x's dtype before the weight product).
// weight [N] in f32, f16 or bf16; the result has x's dtype.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out = {});
// residual += x (rounded to residual's dtype, in place), then returns rms_norm(residual): the
// pre-norm block's residual add and next norm in one pass.
Tensor add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                    const Tensor& out = {});

// ---- Rotary position embedding ------------------------------------------------------------------

// half_split: Llama's rotate_half, pairs (i, i + rotary_dim/2). interleaved: DeepSeek/GLM MLA's
// rope_interleave, pairs (2i, 2i+1) read and written back as halves like Transformers'
// apply_rotary_pos_emb_interleave (q and k get the same permutation, so scores are unchanged).
enum class RopeLayout { half_split, interleaved };

struct RopeParams {
  Tensor inv_freq;  // f32 [rotary_dim / 2], on the device of the tensors it rotates
  RopeLayout layout = RopeLayout::half_split;
  float attention_factor = 1.0f;  // multiplies cos and sin (yarn's mscale)
  // The attention's softmax scale 1/sqrt(qk_head_dim) is multiplied by this (DeepSeek/GLM yarn
  // with mscale_all_dim: mscale^2); 1 otherwise. Not applied by rope().
  double softmax_scale_factor = 1.0;

  int64_t rotary_dim() const { return inv_freq.defined() ? 2 * inv_freq.numel() : 0; }
  RopeParams to(Device device) const;  // copies inv_freq once, at load time
};

// Inverse frequencies exactly as Transformers' rope init functions compute them in f32
// (default, linear, llama3, yarn), on the CPU.
RopeParams rope_params(const ModelConfig& config);
RopeParams rope_params(double rope_theta, int64_t rotary_dim, const RopeScaling& scaling,
                       int64_t max_position_embeddings, RopeLayout layout,
                       bool deepseek_softmax_mscale = false);

// Rotates, in place, the first rotary_dim dims of every head of x [tokens, heads, head_dim]
// (last dim contiguous) at positions [tokens] (i32): angle = float(pos) * inv_freq in f32; cos
// and sin times attention_factor are rounded to x's dtype as Transformers does. The second form
// rotates q and k (k may have another head count, or be undefined) in one launch.
void rope(const Tensor& x, const Tensor& positions, const RopeParams& params);
void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const RopeParams& params);
// rope(q, k), then the step's keys and values written to a KV cache as
// attention_cache_write_kv(k_cache, k, v_cache, v, starts, counts) writes them, k and v being
// [tokens = B x T, heads, head_dim] (token b T + t is row b's t-th) and the caches
// [B, heads, S_max, head_dim]. On CUDA it is one launch: a decode step's RoPE and cache append.
void rope_cache_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                      const RopeParams& params, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
                      const Tensor& counts = {});

// MLA's step into its latent cache [B, 1, S_max, R + Dr] (one row per token: the normalized
// latent, then the rotated k_rope): q_rope [tokens, heads, Dr] and k_rope [tokens, 1, Dr] rotated
// in place as rope(q_rope, k_rope) does, the latent [tokens, 1, R] normalized as rms_norm(latent,
// norm_weight, eps) does (into the cache only; norm_weight in the latent's dtype), and the rows
// written as attention_cache_write(cache, rows, starts, counts) writes them (token b T + t is row
// b's t-th). On CUDA one launch.
void mla_rope_cache_write(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                          const RopeParams& params, const Tensor& norm_weight, double eps, Tensor& cache,
                          const Tensor& starts, const Tensor& counts = {});
// mla_rope_cache_write, then mla_head_matmul(x, w) returned: the absorbed decode step's W_UK
// product (x = q_nope, which must not overlap q_rope, k_rope or the latent). On CUDA one launch
// where the product's decode kernel applies (at most 16 rows, N % 8 == 0).
Tensor mla_rope_cache_write_head_matmul(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent,
                                        const Tensor& positions, const RopeParams& params, const Tensor& norm_weight,
                                        double eps, Tensor& cache, const Tensor& starts, const Tensor& counts,
                                        const Tensor& x, const Tensor& w);

// A decode step's attention, one new token a row: rope(q, k) at positions [B], k and v written
// to the caches at position starts[b], then q attending keys [0, starts[b]] (the new one
// included) as attention_decode does with seq_lens = starts + 1. q [B, Hq, D], k and v [B, Hkv,
// D] may be head views of a fused QKV output (head_dim contiguous); the caches are contiguous
// [B, Hkv, S_max, D] and 0 <= starts[b] < S_max (checked on the host on the CPU; the caller's, as
// KVCache does, on CUDA). Returns [B, Hq, D]. On CUDA one launch, which leaves q and k as they
// were; the CPU runs rope_cache_write (rotating q and k in place) and attention_decode.
Tensor rope_attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                             const RopeParams& params, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
                             float scale, int64_t sliding_window = 0);

// ---- Activations, embedding, elementwise --------------------------------------------------------

// SwiGLU: silu(gate) * up with silu rounded to the dtype first (Transformers' act_fn(gate) * up).
// gate_up [..., 2I] is a fused projection (gate first, then up) -> [..., I] (for a preallocated
// out, pass its two halves to the second form).
Tensor silu_mul(const Tensor& gate_up);
Tensor silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out = {});

// table [V, H] rows at ids (i32 [tokens]) -> [tokens, H] in table's dtype. ids may be on the CPU
// with a CUDA table. An id outside [0, V) is an error naming it and V (for ids on a GPU this
// needs one sync, skipped while a CUDA graph is being captured; rows of bad ids are then NaN).
Tensor embedding(const Tensor& ids, const Tensor& table, const Tensor& out = {});

// a + b, same shape and dtype, contiguous (the residual add).
Tensor add(const Tensor& a, const Tensor& b, const Tensor& out = {});

// Softmax over the last dim, in f32 whatever x's dtype (the sampler's probabilities).
Tensor softmax_last_dim(const Tensor& x, const Tensor& out = {});

// x (f32, f16 or bf16, any layout) converted to `dtype` (f32, f16 or bf16), contiguous, on x's
// device: Tensor::to(dtype) on the CPU; a kernel on CUDA (no trip through the host, so a CUDA
// graph can capture it). Widening is exact; narrowing rounds to nearest even on both.
Tensor cast(const Tensor& x, DType dtype);

}  // namespace marlin::ops
