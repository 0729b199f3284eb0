// moe_routing (a config's Transformers router) and ops::moe_route: argument checks, then the
// CPU or CUDA backend.
#include <string>

#include "core/cuda_check.h"  // fail_no_cuda in builds without CUDA
#include "kernels/cpu/moe_kernels.h"
#include "ops/moe_internal.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/moe_kernels_cuda.h"
#endif

namespace marlin {

// Scratch of the kernels' exact path is sized for this many experts.
constexpr int64_t kMaxExperts = 512;

MoeRouting moe_routing(const ModelConfig& config) {
  MARLIN_CHECK(config.moe.has_value(), "moe_routing", model_type_name(config.model_type), " (",
               config.source, ") has no MoE layers");
  const MoeConfig& m = *config.moe;
  MoeRouting r;
  r.num_experts = m.num_experts;
  r.top_k = m.num_experts_per_tok;
  switch (config.model_type) {
    case ModelType::qwen3_moe:
      r.norm_topk_prob = m.norm_topk_prob;
      r.logits_in_activation_dtype = true;
      break;
    case ModelType::mixtral:
      r.norm_topk_prob = true;
      r.logits_in_activation_dtype = true;
      break;
    case ModelType::deepseek_v2:
      // Transformers 5's DeepseekV2TopkRouter never renormalizes (norm_topk_prob is unused).
      r.method = m.topk_method == TopkMethod::group_limited_greedy ? TopkMethod::group_limited_greedy
                                                                    : TopkMethod::greedy;
      r.n_group = m.n_group;
      r.topk_group = m.topk_group;
      r.routed_scaling_factor = m.routed_scaling_factor;
      break;
    case ModelType::deepseek_v3:
    case ModelType::glm4_moe_lite:
      // Their routers always score with sigmoid and select noaux_tc style, whatever the config's
      // scoring_func/topk_method say.
      r.scoring = RouterScoring::sigmoid;
      r.method = TopkMethod::noaux_tc;
      r.n_group = m.n_group;
      r.topk_group = m.topk_group;
      r.norm_topk_prob = m.norm_topk_prob;
      r.norm_epsilon = 1e-20f;
      r.routed_scaling_factor = m.routed_scaling_factor;
      break;
    default:
      fail("moe_routing", model_type_name(config.model_type), " has no MoE router");
  }
  ops::check_routing("moe_routing", r);
  return r;
}

namespace ops {

void check_routing(const char* op, const MoeRouting& r) {
  const int64_t E = r.num_experts;
  MARLIN_CHECK(E >= 1 && E <= kMaxExperts, op, "num_experts must be in 1..", kMaxExperts, ", got ", E);
  MARLIN_CHECK(r.top_k >= 1 && r.top_k <= E, op, "top_k must be in 1..num_experts=", E, ", got ",
               r.top_k);
  MARLIN_CHECK(r.n_group >= 1 && E % r.n_group == 0, op, "n_group=", r.n_group,
               " must be positive and divide num_experts=", E);
  MARLIN_CHECK(r.topk_group >= 1 && r.topk_group <= r.n_group, op, "topk_group=", r.topk_group,
               " must be in 1..n_group=", r.n_group);
  MARLIN_CHECK(r.method == TopkMethod::greedy || r.top_k <= r.topk_group * (E / r.n_group), op,
               "top_k=", r.top_k, " exceeds the ", r.topk_group * (E / r.n_group),
               " experts of topk_group=", r.topk_group, " groups");
  MARLIN_CHECK(r.method != TopkMethod::noaux_tc || E / r.n_group >= 2, op,
               "noaux_tc needs at least 2 experts per group, got ", E / r.n_group);
}

moe::RouteParams route_params(const MoeRouting& r, bool has_bias) {
  moe::RouteParams p;
  p.num_experts = static_cast<int32_t>(r.num_experts);
  p.top_k = static_cast<int32_t>(r.top_k);
  p.scoring = r.scoring == RouterScoring::sigmoid ? moe::Scoring::sigmoid : moe::Scoring::softmax;
  p.method = r.method == TopkMethod::noaux_tc               ? moe::Method::noaux_tc
             : r.method == TopkMethod::group_limited_greedy ? moe::Method::group_limited_greedy
                                                             : moe::Method::greedy;
  p.n_group = static_cast<int32_t>(r.n_group);
  p.topk_group = static_cast<int32_t>(r.topk_group);
  p.norm_topk_prob = r.norm_topk_prob ? 1 : 0;
  p.norm_epsilon = r.norm_epsilon;
  p.routed_scaling_factor = static_cast<float>(r.routed_scaling_factor);
  p.has_bias = has_bias ? 1 : 0;
  return p;
}

MoeRoute moe_route(const Tensor& logits, const MoeRouting& routing, const Tensor& bias,
                   const MoeRoute& out) {
  constexpr const char* op = "moe_route";
  check_routing(op, routing);
  const int64_t E = routing.num_experts, k = routing.top_k;
  MARLIN_CHECK(logits.defined() && logits.dim() == 2 && logits.dtype() == DType::f32 &&
                   logits.is_contiguous(),
               op, "logits must be contiguous f32 [T, E], got ",
               logits.defined() ? logits.describe() : "an undefined tensor");
  MARLIN_CHECK(logits.size(1) == E, op, "logits have ", logits.size(1), " experts, the routing ", E);
  const int64_t T = logits.size(0);
  const Device device = logits.device();
  if (bias.defined()) {
    MARLIN_CHECK(bias.dim() == 1 && bias.size(0) == E && bias.dtype() == DType::f32 &&
                     bias.is_contiguous() && bias.device() == device,
                 op, "bias must be f32 [", E, "] on ", device.str(), ", got ", bias.describe());
  }
  MoeRoute r = out;
  if (!r.ids.defined()) r.ids = Tensor::empty({T, k}, DType::i32, device);
  if (!r.weights.defined()) r.weights = Tensor::empty({T, k}, DType::f32, device);
  MARLIN_CHECK(r.ids.shape() == Shape({T, k}) && r.ids.dtype() == DType::i32 &&
                   r.ids.is_contiguous() && r.ids.device() == device,
               op, "ids must be i32 [", T, ", ", k, "] on ", device.str(), ", got ", r.ids.describe());
  MARLIN_CHECK(r.weights.shape() == Shape({T, k}) && r.weights.dtype() == DType::f32 &&
                   r.weights.is_contiguous() && r.weights.device() == device,
               op, "weights must be f32 [", T, ", ", k, "] on ", device.str(), ", got ",
               r.weights.describe());
  if (T == 0) return r;
  const moe::RouteParams params = route_params(routing, bias.defined());
  if (device.is_cpu()) {
    cpu::moe_route(logits, bias, params, r.ids, r.weights);
  } else {
#ifdef MARLIN_WITH_CUDA
    cuda::moe_route(logits, bias, params, r.ids, r.weights);
#else
    fail_no_cuda(op);
#endif
  }
  return r;
}

}  // namespace ops
}  // namespace marlin
