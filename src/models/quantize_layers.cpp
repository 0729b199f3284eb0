// quantize_linear_layers (the original replace_linear_layers) and load_and_quantize: the 16-bit
// linear layers of a loaded model quantized in place, chosen by their Hugging Face module paths.
#include <string>
#include <vector>

#include "marlin/model.h"
#include "models/deepseek.h"
#include "models/llama.h"
#include "models/quantized_checkpoint.h"

namespace marlin {
namespace {

void check_format(const char* op, int bits, int group_size) {
  MARLIN_CHECK(bits == 8 || bits == 4 || bits == 2, op, "bits must be 8, 4 or 2, got ", bits);
  MARLIN_CHECK(is_valid_group_size(group_size), op, "group_size must be 32, 64, 128 or 256, got ",
               group_size);
}

}  // namespace

QuantizeStats quantize_linear_layers(CausalLM& model, int bits, int group_size,
                                     const std::optional<std::vector<std::string>>& skip_layers,
                                     const LayerFilter& layer_filter, ScaleMethod scales) {
  constexpr const char* op = "quantize_linear_layers";
  check_format(op, bits, group_size);
  auto* llama = dynamic_cast<LlamaModel*>(&model);
  auto* deepseek = dynamic_cast<DeepseekModel*>(&model);
  MARLIN_CHECK(llama != nullptr || deepseek != nullptr, op, "only llama-family and MLA models ",
               "(deepseek_v2, deepseek_v3, glm4_moe_lite) are supported, not ",
               model_type_name(model.config().model_type));
  // lm_head stays 16-bit by default: its error would add to every other layer's.
  const std::vector<std::string> skip = skip_layers.value_or(std::vector<std::string>{"lm_head"});
  QuantizeStats stats;
  // Every linear by its module path: attention, dense MLPs, each routed and shared expert,
  // lm_head. Routers and norms are not linears here and stay as loaded.
  const LinearTransform transform = [&](const std::string& name, const QuantizedLinear& layer) {
    if (layer.bits() != 16) return layer;  // already quantized: not a candidate, not counted
    // Order as the original: skip list, then the filter, then whether the shape allows it.
    const bool quantize = !module_matches(skip, name) && (!layer_filter || layer_filter(name, layer)) &&
                          layer.in_features() % group_size == 0;
    if (!quantize) {
      ++stats.skipped;
      return layer;
    }
    ++stats.replaced;
    return layer.quantized(bits, group_size, scales);
  };
  if (llama != nullptr) llama->transform_linears(transform);
  if (deepseek != nullptr) deepseek->transform_linears(transform);
  if (stats.replaced > 0) {
    if (llama != nullptr) llama->set_scale_method(scales);
    if (deepseek != nullptr) deepseek->set_scale_method(scales);
  }
  return stats;
}

QuantizedModel load_and_quantize(const std::string& path, int bits, int group_size, Device device) {
  check_format("load_and_quantize", bits, group_size);  // before a possibly long load
  ModelLoadOptions options;
  options.device = device;
  QuantizedModel out;
  out.model = load_model(path, options);
  out.stats = quantize_linear_layers(*out.model, bits, group_size);
  return out;
}

}  // namespace marlin
