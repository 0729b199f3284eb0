// MLAAttention (the original API's MetalMLAAttention): multi-head latent attention of
// DeepSeek-V2/V3 and GLM-4.7-Flash. Keys and values are projected down to one latent row per
// token (kv_lora_rank values, normalized) plus one rotary key shared by every head; the KV cache
// holds only that row (kv_lora_rank + qk_rope_head_dim values per token and layer).
#pragma once

#include <cstdint>
#include <string>

#include "marlin/kv_cache.h"
#include "marlin/nn.h"
#include "marlin/ops_nn.h"

namespace marlin {

struct MLAAttentionConfig {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t q_lora_rank = 0;  // 0: a plain q_proj (DeepSeek-V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t layer_idx = 0;  // which layer of the KV cache this attention writes

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Values per token in the latent cache: the normalized latent, then the rotary key.
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
};

// The projections of one MLA layer by their Hugging Face names. With q_lora_rank > 0 the query
// is q_b_proj(q_a_layernorm(q_a_proj(x))), else q_proj(x).
struct MLAProjections {
  QuantizedLinear q_proj;           // hidden -> heads * qk_head_dim (q_lora_rank == 0)
  QuantizedLinear q_a_proj;         // hidden -> q_lora_rank
  RMSNorm q_a_layernorm;            // [q_lora_rank]
  QuantizedLinear q_b_proj;         // q_lora_rank -> heads * qk_head_dim
  QuantizedLinear kv_a_proj_with_mqa;  // hidden -> kv_lora_rank + qk_rope_head_dim
  RMSNorm kv_a_layernorm;           // [kv_lora_rank]
  QuantizedLinear kv_b_proj;        // kv_lora_rank -> heads * (qk_nope_head_dim + v_head_dim)
  QuantizedLinear o_proj;           // heads * v_head_dim -> hidden
};

class MLAAttention {
 public:
  MLAAttention() = default;
  // rope: rotary_dim = qk_rope_head_dim, the config's layout (interleaved for DeepSeek/GLM) and
  // its softmax_scale_factor (yarn's mscale^2), which multiplies qk_head_dim^-0.5.
  MLAAttention(const MLAAttentionConfig& config, MLAProjections projections, ops::RopeParams rope);

  // x [B, T, hidden] at positions [B * T] (i32, on the layer's device). Without a cache, or with
  // one that holds nothing yet, the latent is expanded through kv_b_proj into per-head keys and
  // values (prefill). Otherwise the new latent rows are written to the cache (a latent cache:
  // KVCacheConfig::keys_only, head_dim = latent_dim()) at each row's own length, and the new
  // queries attend over the cached latent in the absorbed form: W_UK folded into the query,
  // W_UV applied to the attended latent. In a step begun with per-row new tokens (right-padded
  // rows, KVCache::begin_step(T, new_tokens)) the padding is never written to the cache and
  // each row's queries see only its own keys; padding rows' outputs are finite and to be
  // dropped. The caller ends the cache step. Returns [B, T, hidden].
  Tensor forward(const Tensor& x, const Tensor& positions, KVCache* cache = nullptr) const;

  const MLAAttentionConfig& config() const { return config_; }
  const MLAProjections& projections() const { return proj_; }
  float softmax_scale() const { return scale_; }
  // The absorbed form's W_UK [H, nope, R] and W_UV [H, R, v]: what a decode step reads in
  // place of kv_b_proj (decode_step_bytes counts them).
  const Tensor& absorbed_uk() const { return w_uk_; }
  const Tensor& absorbed_uv() const { return w_uv_; }

  // prefix + "q_proj" or "q_a_proj"/"q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj".
  void for_each_linear(const std::string& prefix, const LinearVisitor& visit) const;
  void transform_linears(const std::string& prefix, const LinearTransform& transform);

 private:
  void check_projections() const;
  // W_UK [H, nope, R] and W_UV [H, R, v] in the activation dtype, from kv_b_proj's weights
  // (dequantized: the absorbed form computes what the expanded one does with the same weights).
  void derive_absorbed_weights();
  // input_proj_: the two projections of x (q_a_proj or q_proj, and kv_a_proj_with_mqa) as one
  // GEMM where their bits and group sizes agree: a decode step launches one kernel, not two.
  void fuse_input_projections();

  MLAAttentionConfig config_;
  MLAProjections proj_;
  FusedLinear input_proj_;
  ops::RopeParams rope_;
  Tensor w_uk_, w_uv_;
  float scale_ = 1.0f;
};

}  // namespace marlin
