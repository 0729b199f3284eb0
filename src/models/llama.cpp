// LlamaModel: loads the llama-family tensors by their Hugging Face names and runs the decoder.
#include "models/llama.h"

#include <string>
#include <utility>

#include "marlin/attention.h"
#include "marlin/moe.h"
#include "marlin/ops_nn.h"
#include "models/model_common.h"
#include "models/moe_weights.h"
#include "models/quantized_checkpoint.h"

namespace marlin {

LlamaModel::LlamaModel(ModelConfig config, const WeightSource& w, const ModelLoadOptions& options)
    : DecoderModel(std::move(config), options) {
  const ModelConfig& c = config_;
  const std::string type(model_type_name(c.model_type));
  MARLIN_CHECK(!c.mla, "load_model", type, " models with MLA layers are not supported by "
               "LlamaModel (", c.source, ")");
  MARLIN_CHECK(c.hidden_act == "silu", "load_model", "hidden_act ", c.hidden_act,
               " is not supported (silu only) in ", c.source);
  MARLIN_CHECK(options.bits == 16 || options.bits == 8 || options.bits == 4 || options.bits == 2,
               "load_model", "bits must be 16, 8, 4 or 2, got ", options.bits);
  placement_ = {options.device, options.dtype.value_or(default_model_dtype(c, options.device))};

  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const Tensor embed = w.get("model.embed_tokens.weight", {V, H});
  embed_tokens_ = Embedding(embed, placement_);
  const ops::RopeParams rope = ops::rope_params(c).to(placement_.device);
  // A checkpoint of save_quantized holds its quantized layers packed, the others in 16 bits
  // (listed in modules_not_converted); nothing is quantized again.
  const bool stored_quantized = marlin_quantization(c).has_value();
  auto linear = [&](const std::string& prefix, int64_t in, int64_t out, bool bias) {
    return load_model_linear(w, options, placement_, stored_quantized, prefix, in, out, bias);
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i);
    AttentionConfig ac;
    ac.hidden_size = H;
    ac.num_heads = Hq;
    ac.num_kv_heads = Hkv;
    ac.head_dim = D;
    ac.sliding_window = c.uses_sliding_window(i) ? c.sliding_window.value_or(0) : 0;
    ac.layer_idx = i;
    RMSNorm q_norm, k_norm;
    if (c.qk_norm) {
      q_norm = RMSNorm(w.get(p + ".self_attn.q_norm.weight", {D}), c.rms_norm_eps, placement_);
      k_norm = RMSNorm(w.get(p + ".self_attn.k_norm.weight", {D}), c.rms_norm_eps, placement_);
    }
    Attention attn(ac, linear(p + ".self_attn.q_proj", H, Hq * D, c.attention_bias),
                   linear(p + ".self_attn.k_proj", H, Hkv * D, c.attention_bias),
                   linear(p + ".self_attn.v_proj", H, Hkv * D, c.attention_bias),
                   linear(p + ".self_attn.o_proj", Hq * D, H, c.attention_output_bias), rope,
                   std::move(q_norm), std::move(k_norm), options.fuse_projections);
    if (c.is_moe_layer(i)) {  // qwen3_moe, mixtral: the feed-forward is a MoE
      auto expert_linear = [&](const std::string& prefix, int64_t in, int64_t out) {
        return linear(prefix, in, out, false);
      };
      auto from_weight = [&](const Tensor& weight) {
        return QuantizedLinear(weight, {}, options.bits, options.group_size, placement_, options.scales);
      };
      layers_.emplace_back(RMSNorm(w.get(p + ".input_layernorm.weight", {H}), c.rms_norm_eps, placement_),
                           std::move(attn),
                           RMSNorm(w.get(p + ".post_attention_layernorm.weight", {H}), c.rms_norm_eps,
                                   placement_),
                           load_moe(w, c, i, expert_linear, from_weight, placement_));
      continue;
    }
    MLP mlp(linear(p + ".mlp.gate_proj", H, I, c.mlp_bias), linear(p + ".mlp.up_proj", H, I, c.mlp_bias),
            linear(p + ".mlp.down_proj", I, H, c.mlp_bias), options.fuse_projections);
    layers_.emplace_back(RMSNorm(w.get(p + ".input_layernorm.weight", {H}), c.rms_norm_eps, placement_),
                         std::move(attn),
                         RMSNorm(w.get(p + ".post_attention_layernorm.weight", {H}), c.rms_norm_eps,
                                 placement_),
                         std::move(mlp));
  }
  norm_ = RMSNorm(w.get("model.norm.weight", {H}), c.rms_norm_eps, placement_);
  // lm_head stays 16-bit: its error would add to every quantized layer's (the original API's
  // default too), unless a saved checkpoint holds it quantized (quantize_linear_layers asked to).
  if (!c.tie_word_embeddings && w.has("lm_head.weight_packed")) {
    lm_head_ = load_packed_linear(w, "lm_head", H, V, {}, options.bits, options.group_size, placement_);
  } else {
    const Tensor head = c.tie_word_embeddings ? embed : w.get("lm_head.weight", {V, H});
    lm_head_ = QuantizedLinear(head, {}, 16, options.group_size, placement_);
  }
}

void LlamaModel::transform_linears(const LinearTransform& transform) {
  // Checked before anything is replaced, so a refusal leaves the model as it was.
  for (size_t i = 0; i < layers_.size(); ++i)
    MARLIN_CHECK(layers_[i].moe() == nullptr, "LlamaModel::transform_linears", "model.layers.", i,
                 " is an MoE layer: its experts cannot be replaced in place (load the model with "
                 "ModelLoadOptions::bits instead)");
  transform_all_linears(transform);
}

Tensor LlamaModel::forward(const Tensor& ids, KVCache* cache) const {
  constexpr const char* op = "CausalLM::forward";
  const Tensor ids2 = ids_as_batch(ids, op);
  const int64_t B = ids2.size(0), T = ids2.size(1);
  // The longest row once these tokens are in, and their positions: with a cache, computed on
  // the device from its lengths, so a decode step copies nothing from the host but the ids the
  // caller passes.
  const int64_t end = step_end(cache, B, T, config_, placement_, /*keys_only=*/false, op);
  check_context(config_, end, op);
  const Tensor positions = step_positions(cache, B, T, placement_.device);

  const Tensor logits = run_decoder(ids2, positions, cache);
  return ids.dim() == 1 ? logits.view({T, config_.vocab_size}) : logits;
}

KVCache LlamaModel::make_cache(int64_t max_seq_len, int64_t batch_size) const {
  KVCacheConfig kc;
  kc.num_layers = config_.num_hidden_layers;
  kc.num_kv_heads = config_.num_key_value_heads;
  kc.head_dim = config_.head_dim;
  kc.max_seq_len = max_seq_len;
  kc.dtype = placement_.dtype;
  return KVCache(kc, batch_size, placement_.device);
}

std::unique_ptr<CausalLM> make_llama_model(const ModelConfig& config, const WeightSource& weights,
                                           const ModelLoadOptions& options) {
  return std::make_unique<LlamaModel>(config, weights, options);
}

}  // namespace marlin
