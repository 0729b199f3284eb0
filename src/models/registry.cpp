// The model registry: config.json's model_type -> the class that builds it.
#include <map>
#include <string>

#include "marlin/model.h"
#include "marlin/safetensors.h"
#include "models/llama.h"
#include "models/quantized_checkpoint.h"

namespace marlin {
namespace {

using Factory = std::unique_ptr<CausalLM> (*)(const ModelConfig&, const SafetensorsCheckpoint&,
                                              const ModelLoadOptions&);

const std::map<ModelType, Factory>& registry() {
  static const std::map<ModelType, Factory> factories = {
      {ModelType::llama, make_llama_model},
      {ModelType::mistral, make_llama_model},
      {ModelType::qwen2, make_llama_model},
      {ModelType::qwen3, make_llama_model},
  };
  return factories;
}

}  // namespace

std::vector<std::string> supported_causal_lm_types() {
  std::vector<std::string> names;
  for (const auto& [type, factory] : registry()) names.emplace_back(model_type_name(type));
  return names;
}

std::unique_ptr<CausalLM> load_model(const std::string& dir, const ModelLoadOptions& options) {
  const ModelConfig config = load_model_config(dir);
  const auto it = registry().find(config.model_type);
  if (it == registry().end()) {
    std::string names;
    for (const std::string& n : supported_causal_lm_types()) names += (names.empty() ? "" : ", ") + n;
    fail("load_model", "model_type ", model_type_name(config.model_type), " (", config.source,
         ") is not supported; supported: ", names);
  }
  ModelLoadOptions opts = options;
  // A checkpoint of save_quantized runs as stored: its packed weights are never re-quantized.
  if (const auto q = marlin_quantization(config)) {
    MARLIN_CHECK(options.bits == 16 || options.bits == q->bits, "load_model", dir,
                 " is stored quantized to ", q->bits, " bits and cannot be loaded at ",
                 options.bits, " bits");
    opts.bits = q->bits;
    opts.group_size = q->group_size;
    opts.scales = q->scales;
  }
  return it->second(config, SafetensorsCheckpoint::open(dir), opts);
}

}  // namespace marlin
