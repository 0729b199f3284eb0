// DecoderModel<Block>: what LlamaModel and DeepseekModel hold and expose alike — the config and
// load options, the placement, the embedding, the decoder blocks, the final norm and lm_head —
// and the walks over their linear layers by Hugging Face module path. Each model loads its own
// blocks and runs its own forward and cache.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "marlin/model.h"
#include "marlin/nn.h"
#include "marlin/ops_nn.h"

namespace marlin {

template <typename Block>
class DecoderModel : public CausalLM {
 public:
  const ModelConfig& config() const override { return config_; }
  Device device() const override { return placement_.device; }
  DType dtype() const override { return placement_.dtype; }
  // On CUDA, unless an MoE layer lacks its device plan (16-bit experts route through the host).
  bool decode_graph_capturable() const override {
    if (!placement_.device.is_cuda()) return false;
    for (const Block& layer : layers_)
      if (layer.moe() != nullptr && layer.moe()->device_plan() == nullptr) return false;
    return true;
  }

  const std::vector<Block>& layers() const { return layers_; }
  const Embedding& embed_tokens() const { return embed_tokens_; }
  const RMSNorm& norm() const { return norm_; }
  const QuantizedLinear& lm_head() const { return lm_head_; }
  // What it was loaded with: save_quantized records bits and scales.
  const ModelLoadOptions& load_options() const { return options_; }

  // Every linear layer by its Hugging Face module path, decoder layers first, lm_head last
  // (quantize_linear_layers, save_quantized).
  void for_each_linear(const LinearVisitor& visit) const {
    for (size_t i = 0; i < layers_.size(); ++i) layers_[i].for_each_linear(layer_prefix(i), visit);
    visit("lm_head", lm_head_);
  }
  // The scale method save_quantized records once quantize_linear_layers has run.
  void set_scale_method(ScaleMethod scales) { options_.scales = scales; }

 protected:
  DecoderModel(ModelConfig config, const ModelLoadOptions& options)
      : config_(std::move(config)), options_(options) {}

  static std::string layer_prefix(size_t i) { return "model.layers." + std::to_string(i) + "."; }

  // f32 logits [B, T, V] of ids [B, T] at `positions`, and the cache's step ended. h, the
  // residual stream, is updated in place; each block's last residual add runs in one pass with
  // the next block's input norm (the final norm after the last block). The logits are converted
  // on the device: a decode step copies nothing to the host (a CUDA graph captures it).
  Tensor run_decoder(const Tensor& ids, const Tensor& positions, KVCache* cache) const {
    const Tensor h = embed_tokens_.forward(ids);
    Tensor normed = layers_.empty() ? norm_.forward(h) : layers_.front().input_layernorm().forward(h);
    for (size_t i = 0; i < layers_.size(); ++i) {
      const RMSNorm& next = i + 1 < layers_.size() ? layers_[i + 1].input_layernorm() : norm_;
      normed = layers_[i].forward_fused(h, normed, positions, cache, next);
    }
    Tensor logits = ops::cast(lm_head_.forward(normed), DType::f32);
    if (cache != nullptr) cache->end_step();
    return logits;
  }
  // Every block's linears, then lm_head, replaced by `transform`.
  void transform_all_linears(const LinearTransform& transform) {
    for (size_t i = 0; i < layers_.size(); ++i) layers_[i].transform_linears(layer_prefix(i), transform);
    lm_head_ = transform("lm_head", lm_head_);
  }

  ModelConfig config_;
  ModelLoadOptions options_;
  LayerPlacement placement_;
  Embedding embed_tokens_;
  std::vector<Block> layers_;
  RMSNorm norm_;
  QuantizedLinear lm_head_;
};

}  // namespace marlin
