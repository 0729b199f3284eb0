// The model registry: config.json's model_type -> the class that builds it.
#include <map>
#include <string>

#include "marlin/model.h"
#include "marlin/safetensors.h"
#include "models/deepseek.h"
#include "models/llama.h"
#include "models/quantized_checkpoint.h"
#include "models/registry.h"

namespace marlin {
namespace {

using Factory = std::unique_ptr<CausalLM> (*)(const ModelConfig&, const WeightSource&,
                                              const ModelLoadOptions&);

const std::map<ModelType, Factory>& registry() {
  static const std::map<ModelType, Factory> factories = {
      {ModelType::llama, make_llama_model},
      {ModelType::mistral, make_llama_model},
      {ModelType::qwen2, make_llama_model},
      {ModelType::qwen3, make_llama_model},
      {ModelType::deepseek_v2, make_deepseek_model},
      {ModelType::deepseek_v3, make_deepseek_model},
      {ModelType::glm4_moe_lite, make_deepseek_model},
      {ModelType::qwen3_moe, make_llama_model},
      {ModelType::mixtral, make_llama_model},
  };
  return factories;
}

}  // namespace

std::vector<std::string> supported_causal_lm_types() {
  std::vector<std::string> names;
  for (const auto& [type, factory] : registry()) names.emplace_back(model_type_name(type));
  return names;
}

namespace {

Factory factory_of(const ModelConfig& config) {
  const auto it = registry().find(config.model_type);
  if (it == registry().end()) {
    std::string names;
    for (const std::string& n : supported_causal_lm_types()) names += (names.empty() ? "" : ", ") + n;
    fail("load_model", "model_type ", model_type_name(config.model_type), " (", config.source,
         ") is not supported; supported: ", names);
  }
  return it->second;
}

}  // namespace

DType default_model_dtype(const ModelConfig& config, Device device) {
  if (device.is_cpu()) return DType::f32;
  if (config.torch_dtype == DType::f16) return DType::f16;
  return DType::bf16;
}

std::unique_ptr<CausalLM> build_model(const ModelConfig& config, const WeightSource& weights,
                                      const ModelLoadOptions& options) {
  return factory_of(config)(config, weights, options);
}

std::unique_ptr<CausalLM> load_model(const std::string& dir, const ModelLoadOptions& options) {
  const ModelConfig config = load_model_config(dir);
  ModelLoadOptions opts = options;
  // A checkpoint of save_quantized runs as stored: its packed weights are never re-quantized.
  if (const auto q = marlin_quantization(config)) {
    MARLIN_CHECK(options.bits == 16 || options.bits == q->bits, "load_model", dir,
                 " is stored quantized to ", q->bits, " bits and cannot be loaded at ",
                 options.bits, " bits");
    opts.bits = q->bits;
    opts.group_size = q->group_size;
    opts.scales = q->scales;
    opts.modules_not_converted = q->modules_not_converted;
  }
  const Factory factory = factory_of(config);  // before the (possibly large) checkpoint is opened
  return factory(config, CheckpointWeights(SafetensorsCheckpoint::open(dir)), opts);
}

std::unique_ptr<CausalLM> load_synthetic_model(const ModelConfig& config,
                                               const ModelLoadOptions& options, uint64_t seed) {
  const DType dtype = options.dtype.value_or(default_model_dtype(config, options.device));
  return build_model(config, SyntheticWeights(config, options.device, dtype, seed), options);
}

}  // namespace marlin
