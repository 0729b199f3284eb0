// MoE routing (ops::moe_route): Transformers' routers of Qwen3-MoE, Mixtral, DeepSeek-V2/V3 and
// GLM-4.7-Flash, on the CPU and CUDA, ties broken as torch.topk breaks them. The MoE layer and
// the fused dispatch are in marlin/moe.h.
#pragma once

#include <cstdint>

#include "marlin/model_config.h"
#include "marlin/tensor.h"

namespace marlin {

// How a router turns logits into experts and weights, exactly as the Transformers class of the
// model family does (moe_routing() maps a config to it).
struct MoeRouting {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  RouterScoring scoring = RouterScoring::softmax;
  // greedy: top-k of all scores. group_limited_greedy (DeepSeek-V2): experts of the topk_group
  // groups with the largest max score. noaux_tc (DeepSeek-V3, GLM): groups ranked by the sum of
  // their two best biased scores; the bias (e_score_correction_bias) only selects.
  TopkMethod method = TopkMethod::greedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;  // divide the chosen weights by their sum (+ norm_epsilon)
  float norm_epsilon = 0.0f;    // DeepSeek-V3/GLM: 1e-20
  double routed_scaling_factor = 1.0;
  // Qwen3-MoE and Mixtral run the router linear in the model dtype (logits rounded to it);
  // DeepSeek and GLM in f32.
  bool logits_in_activation_dtype = false;
};

// Transformers 5's router of config.model_type: qwen3_moe (softmax, norm_topk_prob as
// configured, no scaling), mixtral (softmax, always renormalized), deepseek_v2 (softmax, greedy
// or group_limited_greedy, scaled, never renormalized), deepseek_v3 and glm4_moe_lite (sigmoid,
// noaux_tc, norm_topk_prob, scaled). A config without MoE is an error.
MoeRouting moe_routing(const ModelConfig& config);

namespace ops {

struct MoeRoute {
  Tensor ids;      // i32 [T, top_k]: chosen experts, in torch.topk(sorted=True)'s order
  Tensor weights;  // f32 [T, top_k]
};

// Routes T tokens: logits f32 [T, E], bias f32 [E] (e_score_correction_bias; undefined when the
// router has none), on the CPU or CUDA. Ties are broken as torch.topk on the CPU breaks them.
// Optional preallocated outputs (CUDA graphs).
MoeRoute moe_route(const Tensor& logits, const MoeRouting& routing, const Tensor& bias = {},
                   const MoeRoute& out = {});

}  // namespace ops

}  // namespace marlin
