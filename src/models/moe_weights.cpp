// load_moe: router, experts and shared experts of an MoE layer by their checkpoint names.
#include "models/moe_weights.h"

#include <utility>
#include <vector>

#include "marlin/model.h"
#include "models/model_common.h"

namespace marlin {

std::string moe_prefix(const ModelConfig& c, int64_t layer) {
  return "model.layers." + std::to_string(layer) +
         (c.model_type == ModelType::mixtral ? ".block_sparse_moe" : ".mlp");
}

ExpertNames expert_names(const ModelConfig& c) {
  if (c.model_type == ModelType::mixtral) return {"w1", "w3", "w2"};
  return {"gate_proj", "up_proj", "down_proj"};
}

std::shared_ptr<const MoE> load_moe(const WeightSource& w, const ModelConfig& c, int64_t layer,
                                    const LinearLoader& linear, const WeightQuantizer& from_weight,
                                    const LayerPlacement& placement) {
  MARLIN_CHECK(c.moe.has_value(), "load_model", "layer ", layer, " is an MoE layer but ",
               c.source, " has no MoE config");
  const MoeConfig& m = *c.moe;
  const int64_t H = c.hidden_size, E = m.num_experts, I = m.moe_intermediate_size;
  const std::string p = moe_prefix(c, layer);
  const ExpertNames names = expert_names(c);
  std::vector<MLP> experts;
  experts.reserve(static_cast<size_t>(E));
  const bool fused = w.has(p + ".experts.gate_up_proj");
  if (fused) {
    // Transformers 5's in-memory layout, should a checkpoint hold it: one tensor per kind,
    // each expert's [out, in] slices quantized like any linear.
    const Tensor gate_up = w.get(p + ".experts.gate_up_proj", {E, 2 * I, H});
    const Tensor down = w.get(p + ".experts.down_proj", {E, H, I});
    for (int64_t e = 0; e < E; ++e) {
      const Tensor gu = gate_up.select(0, e);
      experts.emplace_back(from_weight(gu.narrow(0, 0, I)), from_weight(gu.narrow(0, I, I)),
                           from_weight(down.select(0, e)));
    }
  }
  for (int64_t e = 0; e < E && !fused; ++e) {
    const std::string ep = p + ".experts." + std::to_string(e) + ".";
    experts.emplace_back(linear(ep + names.gate, H, I), linear(ep + names.up, H, I),
                         linear(ep + names.down, I, H));
  }
  MLP shared;
  if (m.n_shared_experts > 0) {
    const int64_t Is = I * m.n_shared_experts;
    const std::string sp = p + ".shared_experts.";
    shared = MLP(linear(sp + "gate_proj", H, Is), linear(sp + "up_proj", H, Is),
                 linear(sp + "down_proj", Is, H));
  }
  // The router stays unquantized (f32 in the layer).
  const Tensor router = w.get(p + ".gate.weight", {E, H});
  const std::string bias_name = p + ".gate.e_score_correction_bias";
  const MoeRouting routing = moe_routing(c);
  Tensor bias;
  if (routing.scoring == RouterScoring::sigmoid) bias = w.get(bias_name, {E});
  return std::make_shared<const MoE>(routing, router, std::move(experts), std::move(shared), bias,
                                     placement);
}

std::shared_ptr<const MoE> load_synthetic_moe(const ModelConfig& c, const ModelLoadOptions& options,
                                              uint64_t seed) {
  int64_t layer = 0;
  while (layer < c.num_hidden_layers && !c.is_moe_layer(layer)) ++layer;
  MARLIN_CHECK(c.moe.has_value() && layer < c.num_hidden_layers, "load_synthetic_moe", c.source,
               " has no MoE layer");
  const DType dtype = options.dtype.value_or(default_model_dtype(c, options.device));
  const LayerPlacement placement{options.device, dtype};
  const SyntheticWeights w(c, options.device, dtype, seed);
  // As the model classes load their experts (no expert of a supported family has a bias).
  const auto linear = [&](const std::string& prefix, int64_t in, int64_t out) {
    return load_model_linear(w, options, placement, /*stored_quantized=*/false, prefix, in, out, false);
  };
  const auto from_weight = [&](const Tensor& weight) {
    return QuantizedLinear(weight, {}, options.bits, options.group_size, placement, options.scales);
  };
  return load_moe(w, c, layer, linear, from_weight, placement);
}

}  // namespace marlin
