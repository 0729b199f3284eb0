// The model registry's entry for any weight source: config.json's model_type -> the class that
// builds it (load_model passes a checkpoint, load_synthetic_model random weights).
#pragma once

#include <memory>

#include "marlin/model.h"
#include "models/weight_source.h"

namespace marlin {

// Builds the model of `config` from `weights`. An unsupported model_type is an error naming the
// supported ones.
std::unique_ptr<CausalLM> build_model(const ModelConfig& config, const WeightSource& weights,
                                      const ModelLoadOptions& options);

}  // namespace marlin
