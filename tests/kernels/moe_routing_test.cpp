// MoE routing against Transformers' routers (fixtures of tools/make_tiny_moe_models.py: random
// logits and logits full of ties, for softmax, sigmoid + bias with groups, group_limited_greedy),
// the torch.topk transcription against libstdc++'s own algorithms, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "kernels/torch_topk.h"
#include "marlin/moe.h"
#include "marlin/npy.h"
#include "test_util.h"

namespace marlin {
namespace {

const std::string kRoot = std::string(MARLIN_TEST_FIXTURES) + "/moe_routing";

nlohmann::json cases() {
  std::ifstream f(kRoot + "/cases.json");
  return nlohmann::json::parse(f).at("cases");
}

// The case's fields as a config.json (with the keys every config needs), parsed like a model's.
MoeRouting routing_of(const nlohmann::json& c) {
  nlohmann::json config = c;
  config.erase("sorted");
  const int64_t E = c.value("n_routed_experts", c.value("num_experts", c.value("num_local_experts", 0)));
  config["hidden_size"] = E;
  config["vocab_size"] = 16;
  config["intermediate_size"] = 16;
  config["moe_intermediate_size"] = 16;
  config["num_hidden_layers"] = 1;
  config["num_attention_heads"] = 1;
  config["kv_lora_rank"] = 8;
  config["qk_rope_head_dim"] = 8;
  config["qk_nope_head_dim"] = 8;
  config["v_head_dim"] = 8;
  return moe_routing(parse_model_config(config.dump(), "routing case"));
}

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor c = t.to(Device::cpu());
  return std::vector<int32_t>(c.data<int32_t>(), c.data<int32_t>() + c.numel());
}

TEST(MoeRouting, MatchesTransformersRoutersIncludingTies) {
  const nlohmann::json all = cases();
  for (const auto& [name, c] : all.items()) {
    SCOPED_TRACE(name);
    const MoeRouting routing = routing_of(c);
    const std::string dir = kRoot + "/" + name;
    const Tensor logits = load_npy(dir + "/logits.npy");
    const Tensor bias =
        std::ifstream(dir + "/bias.npy").good() ? load_npy(dir + "/bias.npy") : Tensor();
    const std::vector<int32_t> want_ids = ints(load_npy(dir + "/ids.npy"));
    const std::vector<float> want_w = load_npy(dir + "/weights.npy").to_float_vector();
    const ops::MoeRoute got = ops::moe_route(logits, routing, bias);
    const std::vector<int32_t> ids = ints(got.ids);
    const std::vector<float> w = got.weights.to_float_vector();
    const int64_t T = logits.size(0), k = routing.top_k;
    ASSERT_EQ(ids.size(), want_ids.size());
    int mismatched_rows = 0;
    for (int64_t t = 0; t < T; ++t) {
      // Transformers' DeepSeek/GLM routers take topk(sorted=False): the same experts in
      // introselect's order. Compare those as sets of (id, weight). Weights within a few ulps
      // (torch's vectorized exp and summation order).
      std::vector<std::pair<int32_t, float>> a, b;
      for (int64_t j = 0; j < k; ++j) {
        a.emplace_back(ids[t * k + j], w[t * k + j]);
        b.emplace_back(want_ids[t * k + j], want_w[t * k + j]);
      }
      if (!c.at("sorted").get<bool>()) {
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
      }
      bool same = true;
      for (int64_t j = 0; j < k; ++j) {
        same = same && a[j].first == b[j].first &&
               std::fabs(a[j].second - b[j].second) <= 4e-6f * std::fabs(b[j].second) + 1e-12f;
      }
      if (!same && ++mismatched_rows <= 3) {
        std::string got_s, want_s;
        for (int64_t j = 0; j < k; ++j) {
          got_s += " " + std::to_string(a[j].first) + ":" + std::to_string(a[j].second);
          want_s += " " + std::to_string(b[j].first) + ":" + std::to_string(b[j].second);
        }
        ADD_FAILURE() << "token " << t << ": got" << got_s << ", Transformers" << want_s;
      }
    }
    EXPECT_EQ(mismatched_rows, 0);
  }
}

// The transcription picks what libstdc++'s nth_element/partial_sort/sort pick, on arrays full of
// equal values (where the algorithms' internals decide).
TEST(MoeRouting, TorchTopkTranscriptionMatchesLibstdcxx) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 3000; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 300);
    const int k = 1 + static_cast<int>(rng() % std::min(n, 40));
    const int levels = 1 + static_cast<int>(rng() % 6);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(rng() % levels);
    std::vector<topk::Entry> queue(static_cast<size_t>(n));
    std::vector<int32_t> got(static_cast<size_t>(k));
    topk::select(v.data(), n, k, queue.data(), got.data());

    std::vector<std::pair<double, int64_t>> q;
    for (int j = 0; j < n; ++j) q.emplace_back(v[static_cast<size_t>(j)], j);
    auto comp = [](const auto& x, const auto& y) { return x.first > y.first; };
    if (static_cast<int64_t>(k) * 64 <= n) {
      std::partial_sort(q.begin(), q.begin() + k, q.end(), comp);
    } else {
      std::nth_element(q.begin(), q.begin() + k - 1, q.end(), comp);
      std::sort(q.begin(), q.begin() + k - 1, comp);
    }
    for (int j = 0; j < k; ++j)
      ASSERT_EQ(got[static_cast<size_t>(j)], q[static_cast<size_t>(j)].second)
          << "n=" << n << " k=" << k << " slot " << j;
  }
}

TEST(MoeRouting, ErrorsNameTheProblem) {
  MoeRouting r;
  r.num_experts = 8;
  r.top_k = 2;
  const Tensor logits = testing::random_tensor({3, 8}, DType::f32, 1);
  EXPECT_NE(testing::error_message([&] { ops::moe_route(logits.narrow(1, 0, 4).contiguous(), r); })
                .find("[moe_route] logits have 4 experts, the routing 8"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] { ops::moe_route(logits.to(DType::bf16), r); })
                .find("logits must be contiguous f32"),
            std::string::npos);
  MoeRouting bad = r;
  bad.top_k = 9;
  EXPECT_NE(testing::error_message([&] { ops::moe_route(logits, bad); })
                .find("top_k must be in 1..num_experts=8, got 9"),
            std::string::npos);
  bad = r;
  bad.method = TopkMethod::noaux_tc;
  bad.n_group = 3;
  EXPECT_NE(testing::error_message([&] { ops::moe_route(logits, bad); })
                .find("n_group=3 must be positive and divide num_experts=8"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] { ops::moe_route(logits, r, Tensor::zeros({7}, DType::f32)); })
                .find("bias must be f32 [8]"),
            std::string::npos);
}

TEST(MoeRouting, ConfigMapsToTransformersRouter) {
  const ModelConfig glm = load_model_config(std::string(MARLIN_SOURCE_DIR) +
                                            "/bench/configs/glm-4.7-flash.json");
  const MoeRouting r = moe_routing(glm);
  EXPECT_EQ(r.num_experts, 64);
  EXPECT_EQ(r.top_k, 4);
  EXPECT_EQ(r.scoring, RouterScoring::sigmoid);
  EXPECT_EQ(r.method, TopkMethod::noaux_tc);
  EXPECT_TRUE(r.norm_topk_prob);
  EXPECT_FLOAT_EQ(static_cast<float>(r.routed_scaling_factor), 1.8f);
  EXPECT_FALSE(r.logits_in_activation_dtype);
  const ModelConfig qwen = load_model_config(std::string(MARLIN_SOURCE_DIR) +
                                             "/bench/configs/qwen3-30b-a3b.json");
  EXPECT_TRUE(moe_routing(qwen).logits_in_activation_dtype);
  EXPECT_EQ(moe_routing(qwen).routed_scaling_factor, 1.0);
  const ModelConfig dense = load_model_config(std::string(MARLIN_SOURCE_DIR) +
                                              "/bench/configs/qwen3-8b.json");
  EXPECT_NE(testing::error_message([&] { moe_routing(dense); }).find("has no MoE layers"),
            std::string::npos);
}

}  // namespace
}  // namespace marlin
