// CPU MoE routing: the shared per-token routine (moe_routing_common.h) over every token.
#include <vector>

#include "kernels/cpu/moe_kernels.h"

namespace marlin::cpu {

void moe_route(const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
               const Tensor& ids, const Tensor& weights) {
  const int64_t T = logits.size(0);
  const int E = params.num_experts, k = params.top_k;
  std::vector<float> scores(E), choice(E), group_scores(E);
  std::vector<int32_t> chosen(E);
  std::vector<topk::Entry> queue(E);
  const float* bias_data = bias.defined() ? bias.data<float>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    moe::route_token(logits.data<float>() + t * E, bias_data, params, scores.data(),
                     choice.data(), group_scores.data(), chosen.data(), queue.data(),
                     ids.data<int32_t>() + t * k, weights.data<float>() + t * k);
  }
}

}  // namespace marlin::cpu
