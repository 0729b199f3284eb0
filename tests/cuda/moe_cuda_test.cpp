// GPU-only: MoE routing on CUDA against the CPU op (Transformers' fixtures, ties included, and
// random logits), dispatch_moe_decode and dispatch_moe_optimized (and MoE::forward) in bf16/f16
// against the float64 reference of the whole MoE, experts at 2, 4 and 8 bits, with and without
// shared experts, sizes that are not multiples of any tile. Outputs poisoned.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cuda/cuda_test.h"
#include "kernels/cuda/moe_kernels_cuda.h"
#include "nn/moe_plan.h"
#include "marlin/moe.h"
#include "marlin/ops_nn.h"
#include "marlin/npy.h"
#include "moe_reference.h"

namespace marlin {
namespace {

using testing::RandomMoeSpec;

class MoeCuda : public testing::CudaTest {};

void expect_same_route(const ops::MoeRoute& got, const ops::MoeRoute& want, const std::string& what) {
  const Tensor gi = got.ids.to(Device::cpu()), wi = want.ids.to(Device::cpu());
  const std::vector<float> gw = got.weights.to_float_vector(), ww = want.weights.to_float_vector();
  ASSERT_EQ(gi.shape(), wi.shape()) << what;
  int bad = 0;
  for (int64_t i = 0; i < gi.numel(); ++i) {
    const bool same = gi.data<int32_t>()[i] == wi.data<int32_t>()[i] &&
                      std::fabs(gw[i] - ww[i]) <= 1e-5f * std::fabs(ww[i]) + 1e-12f;
    if (!same && ++bad <= 3)
      ADD_FAILURE() << what << " slot " << i << ": cuda " << gi.data<int32_t>()[i] << ":" << gw[i]
                    << ", cpu " << wi.data<int32_t>()[i] << ":" << ww[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST_F(MoeCuda, RouteMatchesCpuOnTransformersFixtures) {
  const std::string root = std::string(MARLIN_TEST_FIXTURES) + "/moe_routing";
  std::ifstream f(root + "/cases.json");
  const nlohmann::json all = nlohmann::json::parse(f).at("cases");
  testing::PoisonScope poison;
  for (const auto& [name, c] : all.items()) {
    // The routing of each case, spelled out (the CPU test checks moe_routing(config) maps to it).
    MoeRouting r;
    r.num_experts = c.value("n_routed_experts", c.value("num_experts", c.value("num_local_experts", 0)));
    r.top_k = c.at("num_experts_per_tok").get<int64_t>();
    const std::string type = c.at("model_type");
    r.norm_topk_prob = type == "mixtral" || c.value("norm_topk_prob", false);
    if (type == "deepseek_v3" || type == "glm4_moe_lite") {
      r.scoring = RouterScoring::sigmoid;
      r.method = TopkMethod::noaux_tc;
      r.norm_epsilon = 1e-20f;
    } else if (c.value("topk_method", "") == "group_limited_greedy") {
      r.method = TopkMethod::group_limited_greedy;
      r.norm_topk_prob = false;
    }
    if (type == "deepseek_v2") r.norm_topk_prob = false;
    r.n_group = c.value("n_group", 1);
    r.topk_group = c.value("topk_group", 1);
    r.routed_scaling_factor = c.value("routed_scaling_factor", 1.0);
    const Tensor logits = load_npy(root + "/" + name + "/logits.npy");
    const std::string bias_path = root + "/" + name + "/bias.npy";
    const Tensor bias = std::filesystem::exists(bias_path) ? load_npy(bias_path) : Tensor();
    const ops::MoeRoute cpu = ops::moe_route(logits, r, bias);
    const ops::MoeRoute gpu_route =
        ops::moe_route(logits.to(gpu), r, bias.defined() ? bias.to(gpu) : Tensor());
    expect_same_route(gpu_route, cpu, name);
  }
}

TEST_F(MoeCuda, RouteMatchesCpuOnRandomAndTiedLogits) {
  testing::PoisonScope poison;
  std::mt19937 rng(3);
  const MoeRouting routings[] = {testing::softmax_routing(64, 4, true),
                                 testing::softmax_routing(128, 8, false),
                                 testing::softmax_routing(256, 2, true),
                                 testing::sigmoid_group_routing(256, 8, 8, 4),
                                 testing::sigmoid_group_routing(64, 4, 1, 1),
                                 testing::softmax_routing(512, 8, true)};
  int seed = 0;
  for (const MoeRouting& r : routings) {
    for (int tied = 0; tied < 2; ++tied) {
      const int64_t T = 37, E = r.num_experts;
      Tensor logits = testing::random_tensor({T, E}, DType::f32, ++seed, 2.0f);
      if (tied) {  // a handful of values: equal scores at the top-k boundary everywhere
        float* p = logits.data<float>();
        for (int64_t i = 0; i < logits.numel(); ++i) p[i] = static_cast<float>(rng() % 3) * 0.5f;
      }
      const Tensor bias = r.scoring == RouterScoring::sigmoid
                              ? testing::random_tensor({E}, DType::f32, ++seed, 0.1f)
                              : Tensor();
      expect_same_route(ops::moe_route(logits.to(gpu), r, bias.defined() ? bias.to(gpu) : Tensor()),
                        ops::moe_route(logits, r, bias),
                        "E=" + std::to_string(E) + (tied ? " tied" : " random"));
    }
  }
}

struct DispatchCase {
  const char* name;
  RandomMoeSpec spec;
};

std::vector<DispatchCase> dispatch_cases() {
  std::vector<DispatchCase> cases;
  RandomMoeSpec a;  // small, mixed bits, no shared experts, softmax (Qwen3-MoE / Mixtral)
  a.hidden = 96;
  a.intermediate = 64;
  a.routing = testing::softmax_routing(8, 2, true);
  a.routing.logits_in_activation_dtype = true;
  a.expert_bits = {8, 4, 2, 4, 8, 2, 4, 2};
  cases.push_back({"softmax_mixed_bits", a});
  RandomMoeSpec b;  // GLM-like: sigmoid + bias, shared expert, group 64, H not a tile multiple
  b.hidden = 320;
  b.intermediate = 192;
  b.shared_intermediate = 192;
  b.group_size = 64;
  b.routing = testing::sigmoid_group_routing(32, 4, 1, 1);
  b.expert_bits = std::vector<int>(32, 4);
  for (int e = 0; e < 32; e += 4) b.expert_bits[static_cast<size_t>(e)] = 2;
  b.expert_bits[1] = 8;
  b.with_bias = true;
  b.seed = 2;
  cases.push_back({"glm_like_shared", b});
  RandomMoeSpec c;  // DeepSeek-V3-like groups, shared experts wider than the routed ones
  c.hidden = 256;
  c.intermediate = 96;
  c.shared_intermediate = 224;
  c.shared_bits = 8;
  c.routing = testing::sigmoid_group_routing(64, 6, 8, 3);
  c.expert_bits = std::vector<int>(64, 4);
  for (int e = 0; e < 64; e += 5) c.expert_bits[static_cast<size_t>(e)] = 2;
  c.with_bias = true;
  c.seed = 3;
  cases.push_back({"deepseek_like_groups", c});
  RandomMoeSpec d;  // the tiny glm4_moe_lite fixture's sizes: H 64, experts 32 wide, group 32
  d.hidden = 64;
  d.intermediate = 32;
  d.shared_intermediate = 32;
  d.routing = testing::sigmoid_group_routing(8, 2, 1, 1);
  d.expert_bits = {4, 8, 4, 8, 4, 8, 4, 8};
  d.with_bias = true;
  d.seed = 4;
  cases.push_back({"glm_fixture_sizes", d});
  RandomMoeSpec e;  // GLM-4.7-Flash's expert width (1536: the decode down kernel cuts K in two)
  e.hidden = 192;
  e.intermediate = 1536;
  e.shared_intermediate = 1536;
  e.routing = testing::sigmoid_group_routing(8, 2, 1, 1);
  e.expert_bits = {4, 4, 8, 4, 2, 4, 4, 4};
  e.with_bias = true;
  e.seed = 5;
  cases.push_back({"glm_expert_width", e});
  return cases;
}

// bf16 / f16 runs: every GEMM input rounded to the activation dtype, as Transformers does.
constexpr double kTolerance = 2e-2;

// The worst token's relative error (rows of n): a wrong tile of a few rows stands out there.
double worst_row_error(const std::vector<double>& got, const std::vector<double>& ref, int64_t n) {
  double worst = 0;
  for (size_t r = 0; r < ref.size() / static_cast<size_t>(n); ++r) {
    const std::vector<double> g(got.begin() + r * n, got.begin() + (r + 1) * n);
    const std::vector<double> e(ref.begin() + r * n, ref.begin() + (r + 1) * n);
    worst = std::max(worst, testing::relative_error(g, e));
  }
  return worst;
}

TEST_F(MoeCuda, DecodeAndOptimizedMatchFloat64Reference) {
  for (DType dt : {DType::bf16, DType::f16}) {
    for (const DispatchCase& dc : dispatch_cases()) {
      SCOPED_TRACE(std::string(dc.name) + " " + std::string(dtype_name(dt)));
      const MoE moe = testing::random_moe(dc.spec, {gpu, dt});
      ASSERT_NE(moe.device_plan(), nullptr);
      // The expert kernels read the canonical layout: no tile-layout copy of any expert, and
      // every expert's weights in one shared allocation (pack_expert_storage).
      for (const MLP& m : moe.experts()) {
        EXPECT_FALSE(m.gate_proj().qweight().tiled.defined() || m.down_proj().qweight().tiled.defined());
        EXPECT_EQ(m.down_proj().qweight().packed.storage(), moe.experts()[0].gate_proj().qweight().packed.storage());
      }
      testing::PoisonScope poison;
      // T <= kMoeDecodeMaxTokens (16) takes the decode kernels, token by token; 17 and more the
      // grouped ones (300: several row tiles an expert, the last ones partial).
      for (int64_t T : {1, 2, 9, 12, 16, 17, 70, 300}) {
        const Tensor x = testing::random_tensor({T, dc.spec.hidden}, dt, 100 + T);
        const std::vector<double> ref = testing::reference_moe(moe, x);
        const Tensor xg = x.to(gpu);
        if (T == 1) {
          EXPECT_TRUE(moe.device_plan()->kernel.tensor_cores);
        }
        if (T == 1 || T > cuda::kMoeDecodeMaxTokens) {
          // The CUDA-core fallbacks (decode kernels, FMA tiles) where the tensor cores apply.
          cuda::set_force_cuda_core_moe(true);
          const Tensor y = T == 1 ? dispatch_moe_decode(default_library(), xg, moe)
                                  : dispatch_moe_optimized(default_library(), xg, moe);
          cuda::set_force_cuda_core_moe(false);
          EXPECT_LT(worst_row_error(testing::to_double(y), ref, dc.spec.hidden), kTolerance) << "CUDA cores, T=" << T;
        }
        if (T == 1) {
          const Tensor y = dispatch_moe_decode(default_library(), xg, moe);
          EXPECT_LT(testing::relative_error(testing::to_double(y), ref), kTolerance) << "decode";
        }
        const Tensor yo = dispatch_moe_optimized(default_library(), xg, moe);
        EXPECT_LT(worst_row_error(testing::to_double(yo), ref, dc.spec.hidden), kTolerance)
            << "optimized T=" << T;
        if (T > 1 && T <= cuda::kMoeDecodeMaxTokens) {
          // Each token exactly as one decode call makes it (its own slots of act and partials).
          for (int64_t t = 0; t < T; ++t) {
            const Tensor one = dispatch_moe_decode(default_library(), xg.narrow(0, t, 1).contiguous(), moe);
            ASSERT_EQ(one.to_float_vector(), yo.narrow(0, t, 1).contiguous().to_float_vector())
                << "token " << t << " of T=" << T;
          }
        }
        const Tensor yf = moe.forward(xg.view({1, T, dc.spec.hidden}));
        EXPECT_EQ(yf.shape(), (Shape{1, T, dc.spec.hidden}));
        EXPECT_LT(testing::relative_error(testing::to_double(yf), ref), kTolerance)
            << "forward T=" << T;
      }
    }
  }
}

// MoE::forward_add_norm: at decode sizes the residual add and the norm run in the router's
// launch (each block from the old residual, the last one writing the new residual and the
// normalized rows), which must give add_rms_norm + forward bit for bit: the output and the
// residual after; 17 tokens take the unfused path.
TEST_F(MoeCuda, ForwardAddNormIsAddNormThenForwardBitForBit) {
  testing::PoisonScope poison;
  for (DType dt : {DType::bf16, DType::f16})
    for (const DispatchCase& dc : dispatch_cases()) {
      SCOPED_TRACE(std::string(dc.name) + " " + std::string(dtype_name(dt)));
      const MoE moe = testing::random_moe(dc.spec, {gpu, dt});
      const int64_t H = dc.spec.hidden;
      const RMSNorm norm(testing::random_tensor({H}, DType::f32, 31), 1e-5, LayerPlacement{gpu, dt});
      for (int64_t T : {1, 3, 16, 17}) {
        const Tensor hidden = testing::random_tensor({T, H}, dt, 200 + T, 2.0f).to(gpu);
        const Tensor x = testing::random_tensor({T, H}, dt, 300 + T).to(gpu);
        const Tensor fused_hidden = hidden.clone(), apart_hidden = hidden.clone();
        // As a decoder block passes them: [1, T, H].
        const Tensor fused = moe.forward_add_norm(fused_hidden.view({1, T, H}), x.view({1, T, H}), norm);
        const Tensor apart = moe.forward(ops::add_rms_norm(apart_hidden, x, norm.weight(), norm.eps()));
        EXPECT_EQ(fused.shape(), (Shape{1, T, H}));
        EXPECT_EQ(fused.to_float_vector(), apart.to_float_vector()) << "T=" << T;
        EXPECT_EQ(fused_hidden.to_float_vector(), apart_hidden.to_float_vector()) << "T=" << T;
      }
    }
}

// The decode path must agree with itself call after call (split-K counters reset, no state
// left behind) and with the CPU layer built from the same weights.
TEST_F(MoeCuda, DecodeRepeatsAndMatchesCpuLayer) {
  RandomMoeSpec s = dispatch_cases()[1].spec;
  const MoE gpu_moe = testing::random_moe(s, {gpu, DType::bf16});
  const MoE cpu_moe = testing::random_moe(s, {Device::cpu(), DType::f32});
  const Tensor x = testing::random_tensor({1, s.hidden}, DType::bf16, 5);
  const Tensor first = dispatch_moe_decode(default_library(), x.to(gpu), gpu_moe);
  for (int i = 0; i < 5; ++i) {
    const Tensor again = dispatch_moe_decode(default_library(), x.to(gpu), gpu_moe);
    EXPECT_EQ(testing::to_double(again), testing::to_double(first));
  }
  const Tensor cpu_y = cpu_moe.forward(x.to(DType::f32));
  EXPECT_LT(testing::relative_error(testing::to_double(first), testing::to_double(cpu_y)), kTolerance);
}

// MoE::router_logits / route on the device (the per-expert loop's routing): the router kernel
// in its logits-only mode, which once took E from unset route params and wrote nothing. The
// loop itself (a 16-bit expert, so no fused plan) against the float64 reference.
TEST_F(MoeCuda, RouterLogitsAndLoopMatchReference) {
  for (DType dt : {DType::bf16, DType::f16}) {
    for (const DispatchCase& dc : dispatch_cases()) {
      SCOPED_TRACE(std::string(dc.name) + " " + std::string(dtype_name(dt)));
      RandomMoeSpec s = dc.spec;
      s.expert_bits[1] = 16;
      const MoE moe = testing::random_moe(s, {gpu, dt});
      ASSERT_EQ(moe.device_plan(), nullptr);
      const MoE cpu_moe = testing::random_moe(s, {Device::cpu(), dt});
      testing::PoisonScope poison;
      for (int64_t T : {1, 3, 9}) {
        const Tensor x = testing::random_tensor({T, s.hidden}, dt, 200 + T);
        const std::vector<float> got = moe.router_logits(x.to(gpu)).to_float_vector();
        const std::vector<float> want = cpu_moe.router_logits(x).to_float_vector();
        ASSERT_EQ(got.size(), want.size());
        const float tol = s.routing.logits_in_activation_dtype ? 1e-2f : 1e-4f;
        int bad = 0;
        for (size_t i = 0; i < want.size(); ++i)
          if (!(std::fabs(got[i] - want[i]) <= tol * std::fabs(want[i]) + 1e-4f) && ++bad <= 3)
            ADD_FAILURE() << "logit " << i << ": cuda " << got[i] << ", cpu " << want[i];
        EXPECT_EQ(bad, 0) << "T=" << T;
        const Tensor y = moe.forward(x.to(gpu));
        EXPECT_LT(testing::relative_error(testing::to_double(y), testing::reference_moe(moe, x)),
                  kTolerance)
            << "loop T=" << T;
      }
    }
  }
}

TEST_F(MoeCuda, ErrorsNameTheProblem) {
  RandomMoeSpec s = dispatch_cases()[0].spec;
  const MoE moe = testing::random_moe(s, {gpu, DType::bf16});
  const Tensor x2 = testing::random_tensor({2, s.hidden}, DType::bf16, 1).to(gpu);
  EXPECT_NE(testing::error_message([&] { dispatch_moe_decode(default_library(), x2, moe); })
                .find("[dispatch_moe_decode] takes one token"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] {
              dispatch_moe_optimized(default_library(), x2.to(DType::f16), moe);
            }).find("but the layer computes in bf16"),
            std::string::npos);
  s.expert_bits[0] = 16;  // an unquantized expert: no fused plan, the per-expert loop instead
  const MoE loop = testing::random_moe(s, {gpu, DType::bf16});
  EXPECT_EQ(loop.device_plan(), nullptr);
  const Tensor x = testing::random_tensor({3, s.hidden}, DType::bf16, 2);
  EXPECT_LT(testing::relative_error(testing::to_double(loop.forward(x.to(gpu))),
                                    testing::reference_moe(loop, x)),
            kTolerance);
}

}  // namespace
}  // namespace marlin
