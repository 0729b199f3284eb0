// Sampler on the CPU: chi-square tests of the sampled distributions (categorical, top-k, top-p,
// the combination in Transformers' order), greedy = argmax, the repetition penalty against
// hand-computed values, reproducible seeds, and clear errors for invalid parameters.
#include <gtest/gtest.h>

#include <set>

#include "marlin/sampler.h"
#include "sampler_reference.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::chi_square_p_value;
using testing::filtered_distribution;

const std::vector<float> kLogits{3.0f, 2.5f, -1.0f, 2.0f, 1.0f, 0.5f, 0.0f, -2.0f};
constexpr int kDraws = 20000;

Tensor logits_tensor(const std::vector<float>& x, DType dt = DType::f32) {
  return Tensor::from_vector(x, {static_cast<int64_t>(x.size())}, DType::f32).to(dt);
}

template <typename Draw>
std::vector<int> histogram(size_t V, Draw&& draw) {
  std::vector<int> counts(V, 0);
  for (int i = 0; i < kDraws; ++i) ++counts[static_cast<size_t>(draw())];
  return counts;
}

// The draws fit the expected distribution, and do not fit the distribution of a plausible
// mistake (so the test has the power to catch it).
void expect_fits(const std::vector<int>& counts, const std::vector<double>& want,
                 const std::vector<double>& wrong, const char* what) {
  EXPECT_GT(chi_square_p_value(counts, want), 1e-3) << what;
  EXPECT_LT(chi_square_p_value(counts, wrong), 1e-6) << what << ": cannot tell a wrong sampler";
}

TEST(Sampler, CategoricalFollowsSoftmaxOverTemperature) {
  for (DType dt : {DType::f32, DType::bf16}) {
    Sampler s(8, 7);
    const Tensor x = logits_tensor(kLogits, dt);
    const auto counts = histogram(8, [&] { return s.sample_categorical(x, 0.8f); });
    expect_fits(counts, filtered_distribution(kLogits, 0.8, 0, 1), filtered_distribution(kLogits, 1.0, 0, 1),
                "categorical");
  }
}

TEST(Sampler, TopKKeepsTheKLargest) {
  Sampler s(8, 11);
  const Tensor x = logits_tensor(kLogits);
  const auto counts = histogram(8, [&] { return s.sample_top_k(x, 3, 1.2f); });
  expect_fits(counts, filtered_distribution(kLogits, 1.2, 3, 1), filtered_distribution(kLogits, 1.2, 4, 1),
              "top-k");
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  Sampler s(8, 13);
  const Tensor x = logits_tensor(kLogits);
  // softmax: 0.44, 0.27, 0.16, ... : p = 0.8 keeps three tokens.
  const auto want = filtered_distribution(kLogits, 1.0, 0, 0.8);
  EXPECT_EQ(std::count_if(want.begin(), want.end(), [](double p) { return p > 0; }), 3);
  const auto counts = histogram(8, [&] { return s.sample_top_p(x, 0.8f); });
  expect_fits(counts, want, filtered_distribution(kLogits, 1.0, 0, 0.6), "top-p");
}

TEST(Sampler, SampleAppliesPenaltyTemperatureTopKTopPInOrder) {
  Sampler s(8, 17);
  const Tensor x = logits_tensor(kLogits);
  const std::vector<int64_t> ids{0, 3, 3};
  std::vector<float> penalized = kLogits;
  penalized[0] /= 1.5f;
  penalized[3] /= 1.5f;
  // Temperature 2 flattens the distribution before top-p: the nucleus grows (top-p first would
  // keep fewer tokens).
  const auto counts = histogram(8, [&] { return s.sample(x, 2.0f, 0.7f, 6, 1.5f, ids); });
  const auto want = filtered_distribution(penalized, 2.0, 6, 0.7);
  EXPECT_EQ(std::count_if(want.begin(), want.end(), [](double p) { return p > 0; }), 4);
  expect_fits(counts, want, filtered_distribution(penalized, 1.0, 6, 0.7), "sample");
}

TEST(Sampler, GreedyEqualsArgmax) {
  for (uint64_t seed : {1, 2, 3}) {
    const Tensor x = testing::random_tensor({1000}, DType::f16, seed);
    const std::vector<float> v = x.to_float_vector();
    const int64_t best = std::max_element(v.begin(), v.end()) - v.begin();
    Sampler s(1000, seed);
    EXPECT_EQ(s.argmax(x), best);
    EXPECT_EQ(s.sample(x, 0.0f), best);
    EXPECT_EQ(s.sample(x.view({1, 1000}), 0.0f, 0.5f, 3), best);  // filters never drop the max
    EXPECT_EQ(s.sample_categorical(x, 0.0f), best);
    // A penalty strong enough to demote the maximum changes the greedy choice.
    const int64_t penalized = s.sample(x, 0.0f, 1.0f, 0, 1e4f, {best});
    EXPECT_NE(penalized, best);
  }
}

TEST(Sampler, RepetitionPenaltyMatchesTransformersDefinition) {
  Sampler s(5, 1);
  const Tensor x = logits_tensor({2.0f, -1.0f, 0.5f, -3.0f, 4.0f});
  const Tensor y = s.apply_repetition_penalty(x, {0, 1, 1, 3}, 2.0f);
  EXPECT_EQ(y.to_float_vector(), (std::vector<float>{1.0f, -2.0f, 0.5f, -6.0f, 4.0f}));
  EXPECT_EQ(x.to_float_vector()[0], 2.0f);  // the input is left as it was
  const Tensor h = s.apply_repetition_penalty(x.to(DType::f16), {4}, 0.5f);  // < 1 rewards
  EXPECT_EQ(h.dtype(), DType::f16);
  EXPECT_EQ(h.to_float_vector()[4], 8.0f);
}

TEST(Sampler, SameSeedSameTokens) {
  const Tensor x = testing::random_tensor({500}, DType::f32, 9, 2.0f);
  Sampler a(500, 42), b(500, 42), c(500, 43);
  std::vector<int64_t> ta, tb, tc;
  for (int i = 0; i < 50; ++i) {
    ta.push_back(a.sample(x, 0.9f, 0.95f, 40));
    tb.push_back(b.sample(x, 0.9f, 0.95f, 40));
    tc.push_back(c.sample(x, 0.9f, 0.95f, 40));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  c.set_seed(42);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(c.sample(x, 0.9f, 0.95f, 40), ta[static_cast<size_t>(i)]);
  // Successive draws differ (fresh noise each call).
  EXPECT_GT(std::set<int64_t>(ta.begin(), ta.end()).size(), 5u);
}

TEST(Sampler, InvalidParametersAreClearErrors) {
  Sampler s(8, 1);
  const Tensor x = logits_tensor(kLogits);
  const auto message = testing::error_message;
  EXPECT_NE(message([&] { s.sample(x, -0.5f); }).find("temperature"), std::string::npos);
  EXPECT_NE(message([&] { s.sample(x, 1.0f, 0.0f); }).find("top_p"), std::string::npos);
  EXPECT_NE(message([&] { s.sample(x, 1.0f, 1.5f); }).find("top_p"), std::string::npos);
  EXPECT_THROW(s.sample(x, 1.0f, NAN), Error);
  EXPECT_NE(message([&] { s.sample(x, 1.0f, 1.0f, -1); }).find("top_k"), std::string::npos);
  EXPECT_NE(message([&] { s.sample(x, 1.0f, 1.0f, 0, 0.0f, {1}); }).find("repetition_penalty"), std::string::npos);
  EXPECT_THROW(s.sample(x, 1.0f, 1.0f, 0, -1.0f, {1}), Error);
  EXPECT_THROW(s.apply_repetition_penalty(x, {8}, 1.2f), Error);
  EXPECT_THROW(s.sample_top_k(x, 0), Error);
  EXPECT_NE(message([&] { s.argmax(logits_tensor({1.0f, 2.0f})); }).find("vocab_size=8"), std::string::npos);
  EXPECT_THROW(Sampler(0, 1), Error);
  EXPECT_THROW(s.argmax(logits_tensor(std::vector<float>(8, NAN))), Error);
}

}  // namespace
}  // namespace marlin
