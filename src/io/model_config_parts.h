// The sub-blocks of config.json parsing: RoPE, multi-head latent attention, mixture of experts.
#pragma once

#include "io/json_fields.h"
#include "marlin/model_config.h"

namespace marlin::io {

// rope_theta, partial_rotary_factor and the scaling block (rope_parameters or rope_scaling).
void parse_rope(const JsonFields& config, double default_theta, ModelConfig& c);
MlaConfig parse_mla(const JsonFields& config);
// Sets c.moe (for MoE families with experts) and c.moe_layers.
void parse_moe(const JsonFields& config, ModelConfig& c);

}  // namespace marlin::io
