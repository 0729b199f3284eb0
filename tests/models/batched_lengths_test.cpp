// Prompts of lengths 3, 12 and 7 as one padded batch on the CPU (fp32): each row's prefill and
// decode logits within 1e-5 of running it alone, the same greedy tokens, for every llama-family
// fixture (mistral's sliding window of 8 included).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "batched_rows_check.h"
#include "marlin/npy.h"

namespace marlin {
namespace {

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

class BatchedLengthsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(BatchedLengthsTest, EachRowMatchesItsSingleRun) {
  const std::string dir = std::string(MARLIN_TEST_FIXTURES) + "/models/" + GetParam();
  ModelLoadOptions options;
  options.dtype = DType::f32;
  const auto model = load_model(dir, options);
  const Tensor prompt = load_npy(dir + "/prompt_ids.npy");
  const std::vector<int32_t> base(prompt.data<int32_t>(), prompt.data<int32_t>() + prompt.numel());
  testing::expect_batch_matches_single_runs(*model, base, {3, 12, 7}, 10, 1e-5, GetParam());
  // A single row, and rows all of one length, through the same path.
  testing::expect_batch_matches_single_runs(*model, base, {5}, 3, 1e-5, GetParam());
  testing::expect_batch_matches_single_runs(*model, base, {4, 4}, 3, 1e-5, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchedLengthsTest, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace marlin
