// LlamaModel: the dense llama family (llama, mistral, qwen2, qwen3) — pre-norm decoder blocks
// with GQA attention and a SwiGLU MLP, tied or untied lm_head.
#pragma once

#include <memory>
#include <vector>

#include "marlin/model.h"
#include "marlin/nn.h"
#include "models/decoder_model.h"
#include "models/weight_source.h"

namespace marlin {

class LlamaModel final : public DecoderModel<TransformerBlock> {
 public:
  LlamaModel(ModelConfig config, const WeightSource& weights, const ModelLoadOptions& options);

  Tensor forward(const Tensor& ids, KVCache* cache = nullptr) const override;
  KVCache make_cache(int64_t max_seq_len, int64_t batch_size = 1) const override;
  // Refused (before anything changes) where a layer is an MoE layer.
  void transform_linears(const LinearTransform& transform);
};

std::unique_ptr<CausalLM> make_llama_model(const ModelConfig& config, const WeightSource& weights,
                                           const ModelLoadOptions& options);

}  // namespace marlin
