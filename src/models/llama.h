// LlamaModel: the dense llama family (llama, mistral, qwen2, qwen3) — pre-norm decoder blocks
// with GQA attention and a SwiGLU MLP, tied or untied lm_head.
#pragma once

#include <memory>
#include <vector>

#include "marlin/model.h"
#include "marlin/nn.h"
#include "models/weight_source.h"

namespace marlin {

class LlamaModel final : public CausalLM {
 public:
  LlamaModel(ModelConfig config, const WeightSource& weights, const ModelLoadOptions& options);

  Tensor forward(const Tensor& ids, KVCache* cache = nullptr) const override;
  KVCache make_cache(int64_t max_seq_len, int64_t batch_size = 1) const override;
  bool decode_graph_capturable() const override;
  const ModelConfig& config() const override { return config_; }
  Device device() const override { return placement_.device; }
  DType dtype() const override { return placement_.dtype; }

  const std::vector<TransformerBlock>& layers() const { return layers_; }
  const Embedding& embed_tokens() const { return embed_tokens_; }
  const RMSNorm& norm() const { return norm_; }
  const QuantizedLinear& lm_head() const { return lm_head_; }
  const ModelLoadOptions& load_options() const { return options_; }

  // Every linear layer by its Hugging Face module path, decoder layers first, lm_head last
  // (quantize_linear_layers, save_quantized).
  void for_each_linear(const LinearVisitor& visit) const;
  void transform_linears(const LinearTransform& transform);
  // The scale method save_quantized records once quantize_linear_layers has run.
  void set_scale_method(ScaleMethod scales) { options_.scales = scales; }

 private:
  ModelConfig config_;
  ModelLoadOptions options_;  // what it was loaded with: save_quantized records bits and scales
  LayerPlacement placement_;
  Embedding embed_tokens_;
  std::vector<TransformerBlock> layers_;
  RMSNorm norm_;
  QuantizedLinear lm_head_;
};

std::unique_ptr<CausalLM> make_llama_model(const ModelConfig& config, const WeightSource& weights,
                                           const ModelLoadOptions& options);

}  // namespace marlin
