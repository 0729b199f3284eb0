// Checkpoints written by save_quantized: the quantization_config block of config.json and the
// packed linears (<name>.weight_packed + <name>.weight_scale, DESIGN.md's canonical layout).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/nn.h"
#include "models/weight_source.h"

namespace marlin {

struct MarlinQuantization {
  int bits = 4;
  int group_size = 128;
  ScaleMethod scales = ScaleMethod::absmax;
  std::vector<std::string> modules_not_converted;  // kept 16-bit (embeddings, skipped linears)
};

// Whether one of `fragments` occurs in the module path `name` (skip_layers and
// modules_not_converted match this way, as the original API's skip_layers does).
bool module_matches(const std::vector<std::string>& fragments, const std::string& name);

// The config's quantization_config when its quant_method is "marlin"; std::nullopt without the
// block. Another quant_method or a malformed block is an error naming the file and the key.
std::optional<MarlinQuantization> marlin_quantization(const ModelConfig& config);

// The linear `prefix` of a saved checkpoint, [out, in] as a Hugging Face weight: its packed
// codes and scales are checked for dtype and shape (errors name the tensor and the file).
QuantizedLinear load_packed_linear(const WeightSource& weights, const std::string& prefix,
                                   int64_t in, int64_t out, const Tensor& bias, int bits,
                                   int group_size, const LayerPlacement& placement);

}  // namespace marlin
