// Mixture of experts (the original API's MetalMoELayer, dispatch_moe_decode and
// dispatch_moe_optimized): Transformers' routers (Qwen3-MoE, Mixtral, DeepSeek-V2/V3,
// GLM-4.7-Flash), SwiGLU experts of QuantizedLinear with a bit width per expert, optional shared
// experts. Independent of the attention kind: any decoder block can hold one.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "marlin/kernel_library.h"
#include "marlin/moe_routing.h"
#include "marlin/nn.h"
#include "marlin/tensor.h"

namespace marlin {

// Per-device launch plan of the fused CUDA paths (tables of expert weight pointers), made once
// when the layer is built.
struct MoeDevicePlan;

// SwiGLU expert from Hugging Face weights gate/up [I, H], down [H, I] at `bits` (16/8/4/2).
MLP make_expert(const Tensor& gate, const Tensor& up, const Tensor& down, int bits,
                int group_size, const LayerPlacement& placement,
                ScaleMethod scales = ScaleMethod::absmax);

class MoE {
 public:
  MoE() = default;
  // router_weight [E, H] (the checkpoint's gate.weight; kept unquantized, in f32), one MLP
  // H -> I_e -> H per expert (each at its own bit width), optional shared experts (one MLP of
  // n_shared_experts * moe_intermediate_size; undefined weights = none), bias [E] f32 or
  // undefined. Every expert must be on the placement's device and dtype.
  MoE(const MoeRouting& routing, const Tensor& router_weight, std::vector<MLP> experts,
      MLP shared_experts, const Tensor& e_score_correction_bias, const LayerPlacement& placement);

  // x [..., H] -> [..., H] in x's dtype. CUDA: dispatch_moe_decode for one token,
  // dispatch_moe_optimized for more (the per-expert loop when an expert is 16-bit). CPU: the
  // routed experts one by one, summed in expert order as Transformers does, plus the shared
  // experts.
  Tensor forward(const Tensor& x) const;
  // The MoE after a residual add and its norm: hidden [..., H] += x (in place), then
  // forward(norm(hidden)), as ops::add_rms_norm and forward compute it. CUDA at decode sizes:
  // the add and the norm run inside the router's launch (the same values).
  Tensor forward_add_norm(const Tensor& hidden, const Tensor& x, const RMSNorm& norm) const;

  // f32 [T, E] router logits of x [T, H] (rounded to x's dtype first for
  // logits_in_activation_dtype routers), and the routing of x.
  Tensor router_logits(const Tensor& x) const;
  ops::MoeRoute route(const Tensor& x) const;

  const MoeRouting& routing() const { return routing_; }
  const Tensor& router_weight() const { return router_weight_; }  // f32 [E, H]
  const Tensor& e_score_correction_bias() const { return bias_; }  // f32 [E] or undefined
  const std::vector<MLP>& experts() const { return experts_; }
  const MLP& shared_experts() const { return shared_; }
  bool has_shared_experts() const { return shared_.down_proj().in_features() > 0; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t num_experts() const { return routing_.num_experts; }
  const LayerPlacement& placement() const { return placement_; }
  // Bit width of each expert (16 for unquantized).
  std::vector<int> expert_bits() const;
  // The fused CUDA plan; null on the CPU or when an expert is 16-bit.
  const MoeDevicePlan* device_plan() const { return plan_.get(); }

 private:
  Tensor forward_experts_loop(const Tensor& x2d, const ops::MoeRoute& route) const;
  void pack_expert_storage();

  MoeRouting routing_;
  Tensor router_weight_;
  Tensor router_weight_t_;  // [H, E] for the CPU GEMM
  Tensor bias_;
  std::vector<MLP> experts_;
  MLP shared_;
  int64_t hidden_size_ = 0;
  LayerPlacement placement_;
  std::shared_ptr<const MoeDevicePlan> plan_;
};

// ---- Per-expert bit widths ----------------------------------------------------------------------

// How often each expert is among the chosen top_k of the calibration tokens x [T, H].
std::vector<int64_t> count_expert_usage(const MoE& moe, const Tensor& x);

// The usage-based policy: the ceil(cold_fraction * E) least chosen experts (fewest picks first,
// the higher id first among equal counts) get `cold_bits` (INT2 by default), the others `bits`.
std::vector<int> expert_bits_by_usage(const std::vector<int64_t>& usage_counts, int bits,
                                      double cold_fraction = 0.25, int cold_bits = 2);

// ---- Fused dispatch (the original API's names) -------------------------------------------------

// One token x [1, H] (or [H]) through `moe` on its CUDA device, on lib's stream: routing,
// the chosen experts' gate/up + SwiGLU, their down projections weighted and summed, plus the
// shared experts, in three launches that read only the chosen experts' weights (expert ids stay
// on the device; no host sync). Needs a quantized MoE on CUDA (moe.device_plan()).
Tensor dispatch_moe_decode(KernelLibrary& lib, const Tensor& x, const MoE& moe);

// Many tokens x [T, H]: routing, then, for up to 16 tokens (a batch of decode steps) on the
// tensor cores, every token through dispatch_moe_decode's expert kernels in one launch pair (each
// token as it would be alone); for more, tokens grouped by expert on the device, one grouped
// GEMM launch over all experts for gate/up (+ SwiGLU) and one for down (on the tensor cores,
// tiles of 16 rows of one expert, where every expert's N is a multiple of 8), then the weighted
// combine with the shared experts. No host sync.
Tensor dispatch_moe_optimized(KernelLibrary& lib, const Tensor& x, const MoE& moe);

}  // namespace marlin
