// Internal: the fused CUDA paths' per-layer plan (the device table of expert weight pointers).
#pragma once

#include <memory>
#include <vector>

#include "marlin/moe.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/moe_kernels_cuda.h"
#endif

namespace marlin {

struct MoeDevicePlan {
#ifdef MARLIN_WITH_CUDA
  cuda::MoeKernelPlan kernel;
#endif
  // The layers the table points into (an MLP may hand out its projections by value).
  std::vector<QuantizedLinear> weights;
};

// The plan of a MoE whose experts are all quantized and on one CUDA device; null otherwise.
std::shared_ptr<const MoeDevicePlan> make_moe_device_plan(const MoE& moe);

// dispatch_moe_decode / dispatch_moe_optimized on the caller's current stream (MoE::forward,
// CUDA graph capture).
Tensor moe_decode_on_current_stream(const Tensor& x, const MoE& moe);
Tensor moe_grouped_on_current_stream(const Tensor& x, const MoE& moe);
// MoE::forward_add_norm's fused path (hidden and x contiguous [T, H]); an undefined tensor, doing
// nothing, where it does not apply.
Tensor moe_decode_add_norm_on_current_stream(const Tensor& hidden, const Tensor& x, const RMSNorm& norm,
                                             const MoE& moe);

}  // namespace marlin
