// The MoE layer on the CPU against the float64 reference of the whole MoE (softmax and
// sigmoid + bias + groups routers, experts at different bit widths, shared experts), the
// usage-based bit policy, and argument errors.
#include <gtest/gtest.h>

#include <numeric>

#include "moe_reference.h"

namespace marlin {
namespace {

using testing::RandomMoeSpec;

struct LayerCase {
  const char* name;
  RandomMoeSpec spec;
  int64_t tokens;
};

std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> cases;
  RandomMoeSpec a;  // Qwen3-MoE-like: softmax, renormalized, mixed bits
  a.routing = testing::softmax_routing(8, 2, true);
  a.expert_bits = {8, 4, 2, 4, 16, 2, 4, 8};
  cases.push_back({"softmax_norm_mixed_bits", a, 7});
  RandomMoeSpec b;  // DeepSeek-V3/GLM-like: sigmoid + bias, 4 groups, shared experts
  b.hidden = 96;
  b.intermediate = 64;
  b.shared_intermediate = 128;
  b.routing = testing::sigmoid_group_routing(16, 4, 4, 2);
  b.expert_bits = std::vector<int>(16, 4);
  for (int e = 0; e < 16; e += 3) b.expert_bits[static_cast<size_t>(e)] = 2;
  b.with_bias = true;
  b.seed = 2;
  cases.push_back({"sigmoid_groups_shared", b, 13});
  RandomMoeSpec c;  // Mixtral-like top-2 of 8, one token
  c.routing = testing::softmax_routing(8, 2, true);
  c.expert_bits = std::vector<int>(8, 16);
  c.seed = 3;
  cases.push_back({"one_token_16bit", c, 1});
  return cases;
}

TEST(MoeLayer, CpuMatchesFloat64Reference) {
  for (const LayerCase& lc : layer_cases()) {
    SCOPED_TRACE(lc.name);
    const MoE moe = testing::random_moe(lc.spec, {});
    EXPECT_EQ(moe.expert_bits(), lc.spec.expert_bits);
    const Tensor x = testing::random_tensor({lc.tokens, lc.spec.hidden}, DType::f32, 40 + lc.spec.seed);
    testing::PoisonScope poison;
    const Tensor y = moe.forward(x);
    ASSERT_EQ(y.shape(), x.shape());
    const double err = testing::relative_error(testing::to_double(y), testing::reference_moe(moe, x));
    EXPECT_LT(err, 1e-5);
    // Leading dims are kept.
    EXPECT_EQ(moe.forward(x.view({1, lc.tokens, lc.spec.hidden})).shape(),
              (Shape{1, lc.tokens, lc.spec.hidden}));
  }
}

// The per-expert loop with 16-bit activations (the path CUDA takes when an expert is 16-bit):
// bf16/f16 placements on the CPU, a 16-bit expert among quantized ones, shared experts, a
// router whose logits are rounded to the activation dtype. Also the router logits themselves
// against float64 (the CUDA twin of this test once routed on logits it never wrote).
TEST(MoeLayer, CpuHalfPrecisionLoopMatchesFloat64Reference) {
  std::vector<LayerCase> cases = layer_cases();
  cases[0].spec.routing.logits_in_activation_dtype = true;
  RandomMoeSpec d = cases[1].spec;  // shared experts at 16 bits, one routed expert at 16 too
  d.shared_bits = 16;
  d.expert_bits[5] = 16;
  d.seed = 4;
  cases.push_back({"sigmoid_groups_16bit_shared", d, 5});
  for (DType dt : {DType::bf16, DType::f16}) {
    for (const LayerCase& lc : cases) {
      SCOPED_TRACE(std::string(lc.name) + " " + std::string(dtype_name(dt)));
      const MoE moe = testing::random_moe(lc.spec, {Device::cpu(), dt});
      for (int64_t T : {int64_t{1}, int64_t{3}, lc.tokens}) {
        const Tensor x = testing::random_tensor({T, lc.spec.hidden}, dt, 60 + T);
        testing::PoisonScope poison;
        // Router logits: f32 from the bf16/f16 x (rounded to x's dtype when the router says so).
        const std::vector<double> xs = testing::to_double(x), wr = testing::to_double(moe.router_weight());
        const std::vector<float> logits = moe.router_logits(x).to_float_vector();
        const int64_t E = moe.num_experts(), H = lc.spec.hidden;
        ASSERT_EQ(logits.size(), static_cast<size_t>(T * E));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t e = 0; e < E; ++e) {
            double v = 0;
            for (int64_t h = 0; h < H; ++h) v += xs[static_cast<size_t>(t * H + h)] * wr[static_cast<size_t>(e * H + h)];
            const double tol = lc.spec.routing.logits_in_activation_dtype ? 1e-2 * std::fabs(v) + 1e-5
                                                                          : 1e-5 * std::fabs(v) + 1e-5;
            ASSERT_NEAR(logits[static_cast<size_t>(t * E + e)], v, tol) << "logit t=" << t << " e=" << e;
          }
        const Tensor y = moe.forward(x);
        ASSERT_EQ(y.dtype(), dt);
        EXPECT_LT(testing::relative_error(testing::to_double(y), testing::reference_moe(moe, x)), 2e-2)
            << "T=" << T;
      }
    }
  }
}

TEST(MoeLayer, UsagePolicyGivesTheRarestExpertsInt2) {
  RandomMoeSpec s;
  s.routing = testing::softmax_routing(8, 2, true);
  s.expert_bits = std::vector<int>(8, 16);
  const MoE moe = testing::random_moe(s, {});
  const Tensor x = testing::random_tensor({200, 64}, DType::f32, 9);
  const std::vector<int64_t> counts = count_expert_usage(moe, x);
  ASSERT_EQ(counts.size(), 8u);
  EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), 400);
  const std::vector<int> bits = expert_bits_by_usage(counts, 4, 0.25);
  std::vector<size_t> order(8);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return counts[a] < counts[b]; });
  int cold = 0;
  for (size_t e = 0; e < 8; ++e) cold += bits[e] == 2;
  EXPECT_EQ(cold, 2);
  for (size_t e = 0; e < 8; ++e) {
    if (bits[e] == 2) {
      EXPECT_LE(counts[e], counts[order[2]]);
    }
  }
  // Equal counts: the higher id is the colder one; 0 and 1 of the fraction.
  EXPECT_EQ(expert_bits_by_usage({5, 5, 5, 9}, 8, 0.25), (std::vector<int>{8, 8, 2, 8}));
  EXPECT_EQ(expert_bits_by_usage({5, 5}, 4, 0.0), (std::vector<int>{4, 4}));
  EXPECT_EQ(expert_bits_by_usage({5, 5}, 4, 1.0, 8), (std::vector<int>{8, 8}));
  EXPECT_NE(testing::error_message([] { expert_bits_by_usage({1}, 3); }).find("bits must be"),
            std::string::npos);
}

TEST(MoeLayer, ErrorsNameTheProblem) {
  RandomMoeSpec s;
  s.routing = testing::softmax_routing(4, 2, true);
  s.expert_bits = std::vector<int>(4, 16);
  const MoE moe = testing::random_moe(s, {});
  const Tensor x = testing::random_tensor({3, 32}, DType::f32, 1);
  EXPECT_NE(testing::error_message([&] { moe.forward(x); }).find("[MoE::forward] x must be [..., 64]"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] { moe.forward(x.to(DType::bf16)); }).find("MoE::forward"),
            std::string::npos);
  std::vector<MLP> three(moe.experts().begin(), moe.experts().end() - 1);
  EXPECT_NE(testing::error_message([&] {
              MoE(s.routing, moe.router_weight(), three, {}, {}, {});
            }).find("[MoE] got 3 experts for num_experts=4"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] {
              MoE(s.routing, moe.router_weight().narrow(1, 0, 32).contiguous(), moe.experts(), {}, {}, {});
            }).find("expert 0 maps 64 -> 64 features, the router 32"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] { dispatch_moe_decode(default_library(), x, moe); })
                .find("[dispatch_moe_decode] needs a MoE on a CUDA device"),
            std::string::npos);
}

}  // namespace
}  // namespace marlin
