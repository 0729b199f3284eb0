// The MoE feed-forward of a decoder layer from Hugging Face tensors, for every family's naming:
// Qwen3-MoE / DeepSeek / GLM (mlp.gate, mlp.experts.N.{gate,up,down}_proj, mlp.shared_experts,
// mlp.gate.e_score_correction_bias), Mixtral (block_sparse_moe.gate,
// block_sparse_moe.experts.N.w1/w3/w2), and Transformers 5's fused expert tensors
// (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "marlin/moe.h"
#include "models/weight_source.h"

namespace marlin {

// Loads one linear [out, in] at `prefix` (16-bit, quantized on load, or packed in a saved
// checkpoint), as the model's loader does for its other linears.
using LinearLoader =
    std::function<QuantizedLinear(const std::string& prefix, int64_t in, int64_t out)>;

// A linear from an [out, in] weight tensor at the model's bits (fused expert tensors).
using WeightQuantizer = std::function<QuantizedLinear(const Tensor& weight)>;

// The MoE of layer `layer` of `config`, or an error naming the missing tensor.
std::shared_ptr<const MoE> load_moe(const WeightSource& w, const ModelConfig& config,
                                    int64_t layer, const LinearLoader& linear,
                                    const WeightQuantizer& from_weight,
                                    const LayerPlacement& placement);

// The module prefix of layer `layer`'s MoE ("model.layers.3.mlp" or
// "model.layers.3.block_sparse_moe") and the names of an expert's three projections.
std::string moe_prefix(const ModelConfig& config, int64_t layer);
struct ExpertNames {
  const char* gate;
  const char* up;
  const char* down;
};
ExpertNames expert_names(const ModelConfig& config);

}  // namespace marlin
