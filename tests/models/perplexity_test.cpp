// strided_perplexity (what `marlin perplexity` runs) on the shipped demo model at 16 bits on the
// CPU against Transformers' value (tools/perplexity_reference.py, tests/fixtures/
// demo_perplexity.json) on a prefix of the held-out text, so the test takes seconds, not minutes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "marlin/error.h"
#include "marlin/model.h"
#include "marlin/perplexity.h"
#include "marlin/tokenizer.h"

namespace marlin {
namespace {

const std::string kDemo = std::string(MARLIN_SOURCE_DIR) + "/models/demo";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The first `lines` lines of the held-out text, newlines included (what `head -n` writes).
std::string heldout_prefix(int lines) {
  const std::string text = read_file(kDemo + "/heldout.txt");
  size_t end = 0;
  for (int i = 0; i < lines && end != std::string::npos; ++i) {
    end = text.find('\n', end);
    if (end != std::string::npos) ++end;
  }
  return text.substr(0, end);
}

class DemoPerplexity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_ = new nlohmann::json(
        nlohmann::json::parse(read_file(std::string(MARLIN_TEST_FIXTURES) + "/demo_perplexity.json")));
    model_ = load_model(kDemo).release();  // bits 16, f32 on the CPU
    const nlohmann::json& prefix = (*fixture_)["prefix"];
    ids_ = new std::vector<int32_t>(
        Tokenizer::from_dir(kDemo).encode(heldout_prefix(prefix["lines"].get<int>()), true));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete fixture_;
    delete ids_;
  }
  static const CausalLM* model_;
  static nlohmann::json* fixture_;
  static std::vector<int32_t>* ids_;
};
const CausalLM* DemoPerplexity::model_ = nullptr;
nlohmann::json* DemoPerplexity::fixture_ = nullptr;
std::vector<int32_t>* DemoPerplexity::ids_ = nullptr;

TEST_F(DemoPerplexity, MatchesTransformersToFourSignificantDigits) {
  const nlohmann::json& want = (*fixture_)["prefix"];
  // Same tokenization as Transformers: one bos first, the same length.
  ASSERT_EQ(static_cast<int64_t>(ids_->size()), want["text_tokens"].get<int64_t>());
  ASSERT_EQ(std::vector<int32_t>(ids_->begin(), ids_->begin() + 8),
            (*fixture_)["first_ids"].get<std::vector<int32_t>>());
  const PerplexityResult r = strided_perplexity(*model_, *ids_, want["context"], want["stride"]);
  EXPECT_EQ(r.tokens_scored, want["tokens"].get<int64_t>());
  const double ref = want["value"].get<double>();
  // 4 significant digits: within half a unit of the 4th digit (0.005 at ~19).
  const double unit = std::pow(10.0, std::floor(std::log10(ref)) - 3);
  EXPECT_LE(std::abs(r.perplexity - ref), 0.5 * unit) << "marlin " << r.perplexity << " vs Transformers " << ref;
  EXPECT_NEAR(r.nll_sum, want["nll_sum"].get<double>(), 1e-4 * want["nll_sum"].get<double>());
}

TEST_F(DemoPerplexity, OverlappingWindowsScoreEachTokenOnceWithMoreContext) {
  // Non-overlapping windows skip each window's first token (Transformers does too); overlapping
  // ones score every token but the text's first exactly once, each after at least
  // context - stride tokens of left context, so a trained model's perplexity must drop.
  const std::vector<int32_t> ids(ids_->begin(), ids_->begin() + 1500);
  const PerplexityResult apart = strided_perplexity(*model_, ids, 256, 256);
  const PerplexityResult overlapped = strided_perplexity(*model_, ids, 256, 64);
  EXPECT_EQ(apart.tokens_scored, 1500 - 6);
  EXPECT_EQ(overlapped.tokens_scored, 1499);
  EXPECT_EQ(apart.windows, 6);           // starts 0, 256, ..., 1280
  EXPECT_EQ(overlapped.windows, 21);     // starts 0, 64, ..., 1280 (the window ending at 1500)
  EXPECT_LT(overlapped.perplexity, apart.perplexity);
  EXPECT_GT(overlapped.perplexity, 1.0);
}

TEST_F(DemoPerplexity, MseScalesReachTheQuantizedLayers) {
  // `--scales mse` goes through ModelLoadOptions::scales: at 2 bits the searched clipping must
  // change the logits (were the option dropped, both loads would quantize alike).
  const std::vector<int32_t> ids(ids_->begin(), ids_->begin() + 64);
  const Tensor x = Tensor::from_vector(ids, {64}, DType::i32);
  ModelLoadOptions options;
  options.bits = 2;
  options.group_size = 32;
  const std::vector<float> rtn = load_model(kDemo, options)->forward(x).to_float_vector();
  options.scales = ScaleMethod::mse;
  const std::vector<float> mse = load_model(kDemo, options)->forward(x).to_float_vector();
  double diff = 0;
  for (size_t i = 0; i < rtn.size(); ++i) diff = std::max(diff, std::abs(double(rtn[i]) - mse[i]));
  EXPECT_GT(diff, 1e-2);
}

TEST_F(DemoPerplexity, Fp4InGroupsOf128StaysNearSixteenBits) {
  // Every K of the demo model (hidden 256, MLP 768) is a multiple of 128, so groups of 128 load;
  // docs/QUALITY.md's bound (FP4, g128, MSE scales within 10% of 16 bits) must hold on a prefix
  // too, and MSE scales must not lose to round-to-nearest. A wrong group-to-scale mapping at
  // g128 (scales of the wrong rows) costs far more than 10%.
  const std::vector<int32_t> ids(ids_->begin(), ids_->begin() + 1024);
  const double full = strided_perplexity(*model_, ids, 512, 512).perplexity;
  ModelLoadOptions options;
  options.bits = 4;
  options.group_size = 128;
  const double rtn = strided_perplexity(*load_model(kDemo, options), ids, 512, 512).perplexity;
  options.scales = ScaleMethod::mse;
  const double mse = strided_perplexity(*load_model(kDemo, options), ids, 512, 512).perplexity;
  EXPECT_LT(mse, 1.10 * full) << "16-bit " << full << ", FP4 g128 mse " << mse;
  EXPECT_LE(mse, rtn) << "FP4 g128: mse " << mse << " vs rtn " << rtn;
  EXPECT_GT(rtn, full) << "quantizing to 4 bits should cost something";
}

TEST_F(DemoPerplexity, RejectsBadWindows) {
  const std::vector<int32_t> ids(ids_->begin(), ids_->begin() + 64);
  EXPECT_THROW(strided_perplexity(*model_, ids, 32, 64), Error);    // stride > context
  EXPECT_THROW(strided_perplexity(*model_, ids, 1024, 512), Error);  // beyond max_position_embeddings
  EXPECT_THROW(strided_perplexity(*model_, {0}, 512, 512), Error);   // nothing to score
  EXPECT_THROW(strided_perplexity(*model_, {0, 9000}, 512, 512), Error);  // outside the vocabulary
}

}  // namespace
}  // namespace marlin
