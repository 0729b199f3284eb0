// RoPE against Transformers: inverse frequencies, attention scaling and one rotated f32 tensor
// per rope type, from fixtures written by tools/make_rope_fixtures.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

std::vector<std::filesystem::path> fixtures() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(std::string(MARLIN_TEST_FIXTURES) + "/rope"))
    if (e.path().extension() == ".json") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(RopeFixture, MatchesTransformers) {
  const auto files = fixtures();
  ASSERT_GE(files.size(), 7u);
  std::set<RopeType> types;
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    std::ifstream in(path);
    const nlohmann::json f = nlohmann::json::parse(in);
    const ModelConfig config = parse_model_config(f.at("config").dump(), path.string());
    types.insert(config.rope_scaling.type);
    const ops::RopeParams p = ops::rope_params(config);
    ASSERT_EQ(p.rotary_dim(), f.at("rotary_dim").get<int64_t>());
    EXPECT_EQ(p.layout == ops::RopeLayout::interleaved, f.at("interleave").get<bool>());
    EXPECT_NEAR(p.attention_factor, f.at("attention_scaling").get<double>(), 1e-6);

    const auto want = f.at("inv_freq").get<std::vector<double>>();
    const auto got = p.inv_freq.to_float_vector();
    // Within an ulp: torch's vectorized powf (Sleef, 1 ulp) is not always correctly rounded,
    // ours is; every later step rounds as torch does, so most entries are bit-identical.
    ASSERT_EQ(got.size(), want.size());
    int64_t identical = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i])) << "inv_freq[" << i << "]";
      identical += got[i] == static_cast<float>(want[i]);
    }
    EXPECT_GE(identical + 2, static_cast<int64_t>(want.size()));

    const Shape shape = f.at("shape").get<Shape>();
    const auto x_values = f.at("x").get<std::vector<float>>();
    Tensor x = Tensor::from_vector(x_values, shape, DType::f32);
    const auto pos = f.at("positions").get<std::vector<int32_t>>();
    ops::rope(x, Tensor::from_vector(pos, {shape[0]}, DType::i32), p);
    const auto rotated = f.at("rotated").get<std::vector<double>>();
    EXPECT_LT(testing::relative_error(testing::to_double(x), rotated), 1e-6);
  }
  EXPECT_EQ(types.size(), 4u) << "default, linear, llama3 and yarn each need a fixture";
}

}  // namespace
}  // namespace marlin
