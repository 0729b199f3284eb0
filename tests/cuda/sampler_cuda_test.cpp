// GPU sampler against the CPU one: the same seed gives the same tokens (the Gumbel noise is the
// same function of (seed, draw, token)), chi-square fits on the device, greedy = argmax,
// repetition penalty identical.
#include <gtest/gtest.h>

#include "cuda/cuda_test.h"
#include "marlin/sampler.h"
#include "sampler_reference.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::chi_square_p_value;
using testing::filtered_distribution;
using testing::random_tensor;

class SamplerCuda : public testing::CudaTest {};

TEST_F(SamplerCuda, SameTokensAsCpuForTheSameSeed) {
  const int64_t V = 32000;
  struct Case { float temperature, top_p; int64_t top_k; };
  const Case cases[] = {{1.0f, 1.0f, 0}, {0.7f, 1.0f, 50}, {0.9f, 0.9f, 0}, {0.8f, 0.95f, 200}, {1.3f, 0.5f, 5}};
  for (DType dt : {DType::f32, DType::bf16})
    for (const Case& c : cases) {
      const Tensor x = random_tensor({V}, dt, 5, 3.0f);
      const Tensor xg = x.to(gpu);
      Sampler cpu_sampler(V, 99), gpu_sampler(V, 99);
      int same = 0;
      for (int i = 0; i < 100; ++i)
        same += cpu_sampler.sample(x, c.temperature, c.top_p, c.top_k) ==
                gpu_sampler.sample(xg, c.temperature, c.top_p, c.top_k);
      // Only a near-tie of two noisy scores within float rounding may differ.
      EXPECT_GE(same, 99) << "T=" << c.temperature << " top_p=" << c.top_p << " top_k=" << c.top_k
                          << " " << dtype_name(dt);
    }
}

TEST_F(SamplerCuda, DistributionsFitOnTheDevice) {
  const std::vector<float> logits{3.0f, 2.5f, -1.0f, 2.0f, 1.0f, 0.5f, 0.0f, -2.0f};
  const Tensor x = Tensor::from_vector(logits, {8}, DType::f32).to(DType::f16).to(gpu);
  struct Case { float temperature, top_p; int64_t top_k; };
  for (const Case& c : {Case{0.8f, 1.0f, 0}, Case{1.2f, 1.0f, 3}, Case{1.0f, 0.8f, 0}, Case{2.0f, 0.7f, 6}}) {
    Sampler s(8, 3);
    std::vector<int> counts(8, 0);
    for (int i = 0; i < 20000; ++i) ++counts[static_cast<size_t>(s.sample(x, c.temperature, c.top_p, c.top_k))];
    EXPECT_GT(chi_square_p_value(counts, filtered_distribution(logits, c.temperature, c.top_k, c.top_p)), 1e-3)
        << "T=" << c.temperature << " top_p=" << c.top_p << " top_k=" << c.top_k;
  }
}

TEST_F(SamplerCuda, GreedyEqualsArgmaxAndTiesGoToTheFirst) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (int64_t V : {7, 1000, 151936}) {
      Tensor x = random_tensor({V}, dt, static_cast<uint64_t>(V));
      std::vector<float> v = x.to_float_vector();
      const int64_t best = std::max_element(v.begin(), v.end()) - v.begin();
      Sampler s(V, 1);
      EXPECT_EQ(s.argmax(x.to(gpu)), best) << V << " " << dtype_name(dt);
      EXPECT_EQ(s.sample(x.to(gpu), 0.0f, 0.9f, 40), best);
      v[static_cast<size_t>(V - 1)] = v[static_cast<size_t>(best)];  // a tie after the maximum
      const Tensor tied = Tensor::from_vector(v, {V}, DType::f32).to(dt).to(gpu);
      EXPECT_EQ(s.argmax(tied), best == V - 1 ? V - 1 : best);
    }
}

TEST_F(SamplerCuda, RepetitionPenaltyMatchesCpu) {
  const Tensor x = random_tensor({5000}, DType::bf16, 8, 2.0f);
  const std::vector<int64_t> ids{0, 17, 17, 4999, 123, 2500};
  Sampler s(5000, 1);
  const auto want = s.apply_repetition_penalty(x, ids, 1.3f).to_float_vector();
  const Tensor got = s.apply_repetition_penalty(x.to(gpu), ids, 1.3f);
  EXPECT_EQ(got.device(), gpu);
  EXPECT_EQ(got.to_float_vector(), want);
}

}  // namespace
}  // namespace marlin
