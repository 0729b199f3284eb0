// MLA models (DeepSeek-V2/V3, GLM-4.7-Flash) with prompts of lengths 3, 12 and 7 as one padded
// batch on the CPU (fp32): each row's prefill and decode logits within 1e-5 of running it alone
// and the same greedy tokens, for every MLA fixture (the expanded prefill and the absorbed
// decode over the latent cache both mask each row to its own keys); and `generate` with prompts
// of different lengths, as a list and as a padded tensor with a mask, equal to the single runs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "batched_rows_check.h"
#include "marlin/generate.h"
#include "marlin/npy.h"

namespace marlin {
namespace {

const char* const kFixtures[] = {"glm4_moe_lite", "deepseek_v3", "deepseek_v2", "deepseek_v2_yarn"};

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::unique_ptr<CausalLM> load_f32(const std::string& name) {
  ModelLoadOptions options;
  options.dtype = DType::f32;
  return load_model(fixture_dir(name), options);
}

class MlaBatchedLengthsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(MlaBatchedLengthsTest, EachRowMatchesItsSingleRun) {
  const auto model = load_f32(GetParam());
  const Tensor prompt = load_npy(fixture_dir(GetParam()) + "/prompt_ids.npy");
  const std::vector<int32_t> base(prompt.data<int32_t>(), prompt.data<int32_t>() + prompt.numel());
  testing::expect_batch_matches_single_runs(*model, base, {3, 12, 7}, 10, 1e-5, GetParam());
  // A single row, and rows all of one length, through the same path.
  testing::expect_batch_matches_single_runs(*model, base, {5}, 3, 1e-5, GetParam());
  testing::expect_batch_matches_single_runs(*model, base, {4, 4}, 3, 1e-5, GetParam());
}

std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> out;
  for (const float v : t.to_float_vector()) out.push_back(static_cast<int64_t>(v));
  return out;
}

TEST_P(MlaBatchedLengthsTest, GeneratePromptsOfDifferentLengths) {
  const auto model = load_f32(GetParam());
  const std::vector<int64_t> prompt = ints(load_npy(fixture_dir(GetParam()) + "/prompt_ids.npy"));
  ASSERT_EQ(prompt.size(), 12u);
  std::vector<std::vector<int64_t>> prompts;
  for (const int64_t n : {3, 12, 7}) prompts.emplace_back(prompt.end() - n, prompt.end());
  GenerationConfig c;
  c.max_new_tokens = 8;
  c.do_sample = false;
  c.repetition_penalty = 1.0f;
  c.eos_token_id = {};
  std::vector<std::vector<int64_t>> expected;
  for (const auto& p : prompts) {
    const std::vector<int64_t> all = ints(
        generate(*model, Tensor::from_vector(p, {static_cast<int64_t>(p.size())}, DType::i64), c));
    expected.emplace_back(all.begin() + static_cast<int64_t>(p.size()), all.end());
  }
  EXPECT_EQ(generate(*model, prompts, c), expected) << GetParam();

  // The same rows right-padded in a [3, 12] tensor with an attention mask.
  std::vector<int64_t> ids, mask;
  for (const auto& p : prompts) {
    std::vector<int64_t> row(p), row_mask(p.size(), 1);
    row.resize(12, 5);
    row_mask.resize(12, 0);
    ids.insert(ids.end(), row.begin(), row.end());
    mask.insert(mask.end(), row_mask.begin(), row_mask.end());
  }
  c.pad_token_id = -1;
  const Tensor out = generate(*model, Tensor::from_vector(ids, {3, 12}, DType::i64),
                              Tensor::from_vector(mask, {3, 12}, DType::i64), c);
  const std::vector<int64_t> all = ints(out);
  const int64_t width = out.size(1);
  for (int64_t b = 0; b < 3; ++b) {
    std::vector<int64_t> tail(all.begin() + b * width + 12, all.begin() + (b + 1) * width);
    while (!tail.empty() && tail.back() == -1) tail.pop_back();
    EXPECT_EQ(tail, expected[b]) << GetParam() << " row " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MlaBatchedLengthsTest, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace marlin
