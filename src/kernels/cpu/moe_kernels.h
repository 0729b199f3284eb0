// CPU backend of the MoE ops: the reference the CUDA kernels are tested against.
#pragma once

#include "kernels/moe_routing_common.h"
#include "marlin/tensor.h"

namespace marlin::cpu {

// ids i32 [T, k] and weights f32 [T, k] from logits f32 [T, E] (contiguous); bias f32 [E] or
// undefined.
void moe_route(const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
               const Tensor& ids, const Tensor& weights);

}  // namespace marlin::cpu
