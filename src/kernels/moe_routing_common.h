// One token's MoE routing as Transformers' routers compute it (Qwen3-MoE, Mixtral, DeepSeek-V2,
// DeepSeek-V3, GLM-4.7-Flash), shared by the CPU op and the CUDA kernels' exact path so that
// both pick the same experts, ties included (torch_topk.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/torch_topk.h"
#include "marlin/dtype.h"

namespace marlin::moe {

enum class Scoring : int32_t { softmax = 0, sigmoid = 1 };
enum class Method : int32_t { greedy = 0, group_limited_greedy = 1, noaux_tc = 2 };

// Plain-data routing parameters (kernel arguments).
struct RouteParams {
  int32_t num_experts = 0;
  int32_t top_k = 0;
  Scoring scoring = Scoring::softmax;
  Method method = Method::greedy;
  int32_t n_group = 1;
  int32_t topk_group = 1;
  int32_t norm_topk_prob = 0;
  float norm_epsilon = 0.0f;
  float routed_scaling_factor = 1.0f;
  int32_t has_bias = 0;
};

#if defined(__CUDACC__)
MARLIN_HD float exp_f32(float x) { return expf(x); }
#else
inline float exp_f32(float x) { return std::exp(x); }
#endif

MARLIN_HD float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// Scores from the router logits: softmax over all experts (f32), or sigmoid.
MARLIN_HD void score_experts(const float* logits, const RouteParams& p, float* scores) {
  const int E = p.num_experts;
  if (p.scoring == Scoring::sigmoid) {
    for (int e = 0; e < E; ++e) scores[e] = sigmoid_f32(logits[e]);
    return;
  }
  float mx = logits[0];
  for (int e = 1; e < E; ++e) mx = logits[e] > mx ? logits[e] : mx;
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) {
    scores[e] = exp_f32(logits[e] - mx);
    sum += scores[e];
  }
  const float inv = 1.0f / sum;
  for (int e = 0; e < E; ++e) scores[e] *= inv;
}

// A group's score from its experts' selection scores c[0..n): the max (group_limited_greedy),
// or topk(2).sum() (noaux_tc): the two largest, NaN first as in torch, added largest first.
MARLIN_HD float group_score(const float* c, int n, Method method) {
  if (method == Method::group_limited_greedy) {
    float mx = c[0];
    for (int i = 1; i < n; ++i) mx = c[i] > mx ? c[i] : mx;
    return mx;
  }
  topk::Entry a{c[0], 0}, b{-INFINITY, -1};
  for (int i = 1; i < n; ++i) {
    const topk::Entry x{c[i], i};
    if (topk::before(x, a)) {
      b = a;
      a = x;
    } else if (b.index < 0 || topk::before(x, b)) {
      b = x;
    }
  }
  return n >= 2 ? a.value + b.value : a.value;
}

// The selection scores (`choice`, [E]) after the bias and the group limit, from `scores`.
// group_limited_greedy (DeepSeek-V2): group score = max, experts of other groups get 0;
// noaux_tc (DeepSeek-V3, GLM): group score = sum of the group's two best biased scores, other
// groups' experts get -inf. Groups are chosen with torch.topk's selection. `queue` holds
// n_group entries, group_scores/chosen n_group floats/ints.
MARLIN_HD void choice_scores(const float* scores, const float* bias, const RouteParams& p,
                             float* choice, float* group_scores, int32_t* chosen,
                             topk::Entry* queue) {
  const int E = p.num_experts;
  for (int e = 0; e < E; ++e) choice[e] = p.has_bias ? scores[e] + bias[e] : scores[e];
  // One group (GLM-4.7-Flash) keeps every expert: skip the no-op mask.
  if (p.method == Method::greedy || p.n_group == 1) return;
  const int G = p.n_group, per_group = E / G;
  for (int g = 0; g < G; ++g) group_scores[g] = group_score(choice + g * per_group, per_group, p.method);
  topk::select(group_scores, G, p.topk_group, queue, chosen);
  const float masked = p.method == Method::noaux_tc ? -INFINITY : 0.0f;
  for (int g = 0; g < G; ++g) {
    bool keep = false;
    for (int j = 0; j < p.topk_group; ++j) keep = keep || chosen[j] == g;
    if (!keep)
      for (int i = 0; i < per_group; ++i) choice[g * per_group + i] = masked;
  }
}

// Weights of the chosen experts (ids[0..k)): the unbiased scores with a bias, else the chosen
// selection scores; renormalized when norm_topk_prob, then times routed_scaling_factor.
MARLIN_HD void expert_weights(const float* scores, const float* choice, const int32_t* ids,
                              const RouteParams& p, float* weights) {
  const int k = p.top_k;
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    weights[j] = p.has_bias ? scores[ids[j]] : choice[ids[j]];
    sum += weights[j];
  }
  if (p.norm_topk_prob) {
    const float denominator = sum + p.norm_epsilon;
    for (int j = 0; j < k; ++j) weights[j] /= denominator;
  }
  if (p.routed_scaling_factor != 1.0f)
    for (int j = 0; j < k; ++j) weights[j] *= p.routed_scaling_factor;
}

// The whole routing of one token. Scratch: scores, choice, group_scores [E] floats, chosen [E]
// ints, queue [E] entries.
MARLIN_HD void route_token(const float* logits, const float* bias, const RouteParams& p,
                           float* scores, float* choice, float* group_scores, int32_t* chosen,
                           topk::Entry* queue, int32_t* ids, float* weights) {
  score_experts(logits, p, scores);
  choice_scores(scores, bias, p, choice, group_scores, chosen, queue);
  topk::select(choice, p.num_experts, p.top_k, queue, ids);
  expert_weights(scores, choice, ids, p, weights);
}

}  // namespace marlin::moe
