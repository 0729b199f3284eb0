// DeepseekModel: the MLA decoders deepseek_v2, deepseek_v3 and glm4_moe_lite (GLM-4.7-Flash) —
// pre-norm blocks of multi-head latent attention and a dense SwiGLU MLP below
// first_k_dense_replace (or where mlp_layer_types says "dense"), a routed MoE with shared
// experts above; untied lm_head. The KV cache holds one latent row per token and layer.
#pragma once

#include <memory>
#include <vector>

#include "marlin/mla.h"
#include "marlin/model.h"
#include "marlin/moe.h"
#include "marlin/nn.h"
#include "models/decoder_model.h"
#include "models/weight_source.h"

namespace marlin {

// x += attn(norm1(x)); x += ffn(norm2(x)), the ffn a dense MLP or a MoE.
class DeepseekBlock {
 public:
  DeepseekBlock(RMSNorm input_layernorm, MLAAttention self_attn, RMSNorm post_attention_layernorm,
                MLP mlp);
  DeepseekBlock(RMSNorm input_layernorm, MLAAttention self_attn, RMSNorm post_attention_layernorm,
                std::shared_ptr<const MoE> moe);
  // hidden [B, T, H] (contiguous), the residual stream, updated in place and returned.
  Tensor forward(const Tensor& hidden, const Tensor& positions, KVCache* cache) const;
  // The same with this block's input norm already applied (normed = input_layernorm(hidden), by
  // the caller or the previous block): hidden is updated in place as forward() does, and
  // next_norm(hidden) is returned, the last residual add and that norm in one pass.
  Tensor forward_fused(const Tensor& hidden, const Tensor& normed, const Tensor& positions, KVCache* cache,
                       const RMSNorm& next_norm) const;

  const RMSNorm& input_layernorm() const { return input_layernorm_; }
  const MLAAttention& self_attn() const { return self_attn_; }
  const RMSNorm& post_attention_layernorm() const { return post_attention_layernorm_; }
  const MLP& mlp() const { return mlp_; }               // dense blocks
  const MoE* moe() const { return moe_.get(); }  // null in a dense block

  // prefix + "self_attn.q_a_proj", ..., "mlp.down_proj" or "mlp.experts.<e>.gate_proj", ...,
  // "mlp.shared_experts.down_proj".
  void for_each_linear(const std::string& prefix, const LinearVisitor& visit) const;
  void transform_linears(const std::string& prefix, const LinearTransform& transform);

 private:
  Tensor feed_forward(const Tensor& normed) const { return moe_ ? moe_->forward(normed) : mlp_.forward(normed); }

  RMSNorm input_layernorm_;
  MLAAttention self_attn_;
  RMSNorm post_attention_layernorm_;
  MLP mlp_;
  std::shared_ptr<const MoE> moe_;
};

class DeepseekModel final : public DecoderModel<DeepseekBlock> {
 public:
  DeepseekModel(ModelConfig config, const WeightSource& weights, const ModelLoadOptions& options);

  Tensor forward(const Tensor& ids, KVCache* cache = nullptr) const override;
  // A latent cache: keys_only, one "head" of kv_lora_rank + qk_rope_head_dim values per token.
  KVCache make_cache(int64_t max_seq_len, int64_t batch_size = 1) const override;
  // MoE layers included: their experts are rebuilt from the transformed layers.
  void transform_linears(const LinearTransform& transform) { transform_all_linears(transform); }
};

std::unique_ptr<CausalLM> make_deepseek_model(const ModelConfig& config, const WeightSource& weights,
                                              const ModelLoadOptions& options);

}  // namespace marlin
