// DeepseekModel: loads the deepseek_v2 / deepseek_v3 / glm4_moe_lite tensors by their Hugging
// Face names (the MoE layers through load_moe: per-expert "mlp.experts.<e>.gate_proj" as the Hub
// checkpoints and Transformers 5's save_pretrained write them, or the fused expert tensors) and
// runs the decoder.
#include "models/deepseek.h"

#include <string>
#include <utility>

#include "marlin/attention.h"
#include "marlin/ops_nn.h"
#include "nn/block_tail.h"
#include "models/model_common.h"
#include "models/moe_weights.h"
#include "models/quantized_checkpoint.h"

namespace marlin {
namespace {

constexpr const char* kOp = "load_model";

// Transformers builds q_a_layernorm and kv_a_layernorm with its RMSNorm's default eps, not the
// config's rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

}  // namespace

DeepseekBlock::DeepseekBlock(RMSNorm input_layernorm, MLAAttention self_attn,
                             RMSNorm post_attention_layernorm, MLP mlp)
    : input_layernorm_(std::move(input_layernorm)),
      self_attn_(std::move(self_attn)),
      post_attention_layernorm_(std::move(post_attention_layernorm)),
      mlp_(std::move(mlp)) {}

DeepseekBlock::DeepseekBlock(RMSNorm input_layernorm, MLAAttention self_attn,
                             RMSNorm post_attention_layernorm, std::shared_ptr<const MoE> moe)
    : input_layernorm_(std::move(input_layernorm)),
      self_attn_(std::move(self_attn)),
      post_attention_layernorm_(std::move(post_attention_layernorm)),
      moe_(std::move(moe)) {}

Tensor DeepseekBlock::forward(const Tensor& hidden, const Tensor& positions, KVCache* cache) const {
  const Tensor attn = self_attn_.forward(input_layernorm_.forward(hidden), positions, cache);
  // hidden += attn, then the second norm, in one pass.
  const Tensor normed = ops::add_rms_norm(hidden, attn, post_attention_layernorm_.weight(),
                                          post_attention_layernorm_.eps());
  ops::add(hidden, feed_forward(normed), hidden);
  return hidden;
}

Tensor DeepseekBlock::forward_fused(const Tensor& hidden, const Tensor& normed, const Tensor& positions,
                                    KVCache* cache, const RMSNorm& next_norm) const {
  const Tensor attn = self_attn_.forward(normed, positions, cache);
  return residual_feed_forward(hidden, attn, post_attention_layernorm_, moe_.get(), mlp_, next_norm);
}

void DeepseekBlock::for_each_linear(const std::string& prefix, const LinearVisitor& visit) const {
  self_attn_.for_each_linear(prefix + "self_attn.", visit);
  if (!moe_) {
    mlp_.for_each_linear(prefix + "mlp.", visit);
    return;
  }
  for (size_t e = 0; e < moe_->experts().size(); ++e)
    moe_->experts()[e].for_each_linear(prefix + "mlp.experts." + std::to_string(e) + ".", visit);
  if (moe_->has_shared_experts())
    moe_->shared_experts().for_each_linear(prefix + "mlp.shared_experts.", visit);
}

void DeepseekBlock::transform_linears(const std::string& prefix, const LinearTransform& transform) {
  self_attn_.transform_linears(prefix + "self_attn.", transform);
  if (!moe_) {
    mlp_.transform_linears(prefix + "mlp.", transform);
    return;
  }
  std::vector<MLP> experts = moe_->experts();
  for (size_t e = 0; e < experts.size(); ++e)
    experts[e].transform_linears(prefix + "mlp.experts." + std::to_string(e) + ".", transform);
  MLP shared = moe_->shared_experts();
  if (moe_->has_shared_experts()) shared.transform_linears(prefix + "mlp.shared_experts.", transform);
  // The MoE plans its fused launches over its experts' weights: build it again around them.
  moe_ = std::make_shared<const MoE>(moe_->routing(), moe_->router_weight(), std::move(experts),
                                     std::move(shared), moe_->e_score_correction_bias(),
                                     moe_->placement());
}

DeepseekModel::DeepseekModel(ModelConfig config, const WeightSource& w, const ModelLoadOptions& options)
    : DecoderModel(std::move(config), options) {
  const ModelConfig& c = config_;
  MARLIN_CHECK(c.mla.has_value(), kOp, model_type_name(c.model_type), " in ", c.source,
               " has no MLA block (kv_lora_rank, qk_rope_head_dim, ...)");
  MARLIN_CHECK(c.hidden_act == "silu", kOp, "hidden_act ", c.hidden_act,
               " is not supported (silu only) in ", c.source);
  MARLIN_CHECK(options.bits == 16 || options.bits == 8 || options.bits == 4 || options.bits == 2,
               kOp, "bits must be 16, 8, 4 or 2, got ", options.bits);
  MARLIN_CHECK(!c.tie_word_embeddings, kOp, "tied embeddings are not supported for ",
               model_type_name(c.model_type), " (", c.source, ")");
  placement_ = {options.device, options.dtype.value_or(default_model_dtype(c, options.device))};

  const MlaConfig& mla = *c.mla;
  const int64_t H = c.hidden_size, V = c.vocab_size, heads = c.num_attention_heads;
  embed_tokens_ = Embedding(w.get("model.embed_tokens.weight", {V, H}), placement_);
  const ops::RopeParams rope = ops::rope_params(c).to(placement_.device);
  // A checkpoint of save_quantized holds its quantized layers packed, the others in 16 bits
  // (listed in modules_not_converted); nothing is quantized again.
  const bool stored_quantized = marlin_quantization(c).has_value();
  auto linear = [&](const std::string& prefix, int64_t in, int64_t out, bool bias) {
    return load_model_linear(w, options, placement_, stored_quantized, prefix, in, out, bias);
  };
  auto norm = [&](const std::string& name, int64_t size, double eps) {
    return RMSNorm(w.get(name, {size}), eps, placement_);
  };
  auto mlp = [&](const std::string& prefix, int64_t inter) {
    return MLP(linear(prefix + ".gate_proj", H, inter, c.mlp_bias),
               linear(prefix + ".up_proj", H, inter, c.mlp_bias),
               linear(prefix + ".down_proj", inter, H, c.mlp_bias), options.fuse_projections);
  };

  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    MLAAttentionConfig ac;
    ac.hidden_size = H;
    ac.num_heads = heads;
    ac.q_lora_rank = mla.q_lora_rank.value_or(0);
    ac.kv_lora_rank = mla.kv_lora_rank;
    ac.qk_nope_head_dim = mla.qk_nope_head_dim;
    ac.qk_rope_head_dim = mla.qk_rope_head_dim;
    ac.v_head_dim = mla.v_head_dim;
    ac.layer_idx = i;
    const std::string a = p + ".self_attn";
    MLAProjections proj;
    if (ac.q_lora_rank > 0) {
      proj.q_a_proj = linear(a + ".q_a_proj", H, ac.q_lora_rank, c.attention_bias);
      proj.q_a_layernorm = norm(a + ".q_a_layernorm.weight", ac.q_lora_rank, kLatentNormEps);
      proj.q_b_proj = linear(a + ".q_b_proj", ac.q_lora_rank, heads * ac.qk_head_dim(), false);
    } else {
      proj.q_proj = linear(a + ".q_proj", H, heads * ac.qk_head_dim(), false);
    }
    proj.kv_a_proj_with_mqa = linear(a + ".kv_a_proj_with_mqa", H, ac.latent_dim(), c.attention_bias);
    proj.kv_a_layernorm = norm(a + ".kv_a_layernorm.weight", ac.kv_lora_rank, kLatentNormEps);
    proj.kv_b_proj = linear(a + ".kv_b_proj", ac.kv_lora_rank,
                            heads * (ac.qk_nope_head_dim + ac.v_head_dim), false);
    proj.o_proj = linear(a + ".o_proj", heads * ac.v_head_dim, H, c.attention_bias);
    MLAAttention attn(ac, std::move(proj), rope);
    RMSNorm in_norm = norm(p + ".input_layernorm.weight", H, c.rms_norm_eps);
    RMSNorm post_norm = norm(p + ".post_attention_layernorm.weight", H, c.rms_norm_eps);
    if (!c.is_moe_layer(i)) {
      layers_.emplace_back(std::move(in_norm), std::move(attn), std::move(post_norm),
                           mlp(p + ".mlp", c.intermediate_size));
      continue;
    }
    auto expert_linear = [&](const std::string& prefix, int64_t in, int64_t out) {
      return linear(prefix, in, out, c.mlp_bias);
    };
    auto from_weight = [&](const Tensor& weight) {
      return QuantizedLinear(weight, {}, options.bits, options.group_size, placement_, options.scales);
    };
    layers_.emplace_back(std::move(in_norm), std::move(attn), std::move(post_norm),
                         load_moe(w, c, i, expert_linear, from_weight, placement_));
  }
  norm_ = norm("model.norm.weight", H, c.rms_norm_eps);
  // lm_head stays 16-bit: its error would add to every quantized layer's. A saved checkpoint
  // holds it packed when quantize_linear_layers was told not to skip it.
  lm_head_ = w.has("lm_head.weight_packed")
                 ? load_packed_linear(w, "lm_head", H, V, {}, options.bits, options.group_size, placement_)
                 : QuantizedLinear(w.get("lm_head.weight", {V, H}), {}, 16, options.group_size, placement_);
}

Tensor DeepseekModel::forward(const Tensor& ids, KVCache* cache) const {
  constexpr const char* op = "CausalLM::forward";
  const Tensor ids2 = ids_as_batch(ids, op);
  const int64_t B = ids2.size(0), T = ids2.size(1);
  const int64_t end = step_end(cache, B, T, config_, placement_, /*keys_only=*/true, op);
  check_context(config_, end, op);
  const Tensor positions = step_positions(cache, B, T, placement_.device);

  const Tensor logits = run_decoder(ids2, positions, cache);
  return ids.dim() == 1 ? logits.view({T, config_.vocab_size}) : logits;
}

KVCache DeepseekModel::make_cache(int64_t max_seq_len, int64_t batch_size) const {
  KVCacheConfig kc;
  kc.num_layers = config_.num_hidden_layers;
  kc.num_kv_heads = 1;
  kc.head_dim = config_.mla->kv_lora_rank + config_.mla->qk_rope_head_dim;
  kc.max_seq_len = max_seq_len;
  kc.dtype = placement_.dtype;
  kc.keys_only = true;
  return KVCache(kc, batch_size, placement_.device);
}

std::unique_ptr<CausalLM> make_deepseek_model(const ModelConfig& config, const WeightSource& weights,
                                              const ModelLoadOptions& options) {
  return std::make_unique<DeepseekModel>(config, weights, options);
}

}  // namespace marlin
