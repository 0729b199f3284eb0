// The MoE models (qwen3_moe with and without norm_topk_prob and a dense layer, mixtral) against
// Transformers (fixtures of tools/make_tiny_moe_models.py): fp32 logits within 1e-4, 32 greedy
// tokens through the KV cache, quantized experts (FP8 < FP4 < INT2 error), save_quantized /
// load_quantized bit-identical, and load errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/moe.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"
#include "model_test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

const char* const kMoeFixtures[] = {"qwen3_moe", "qwen3_moe_nonorm", "mixtral"};

using testing::fixture_dir;
using testing::ids_tensor;
using testing::load_ids;
using testing::relative_error;

class MoeFixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(MoeFixtureTest, LogitsMatchTransformersFp32) {
  testing::expect_logits_match_transformers(GetParam(), 1e-4);
}

TEST_P(MoeFixtureTest, GreedyThroughKVCacheMatchesTransformers) {
  const std::string dir = fixture_dir(GetParam());
  const auto model = load_model(dir);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const std::vector<int32_t> expected = load_ids(dir + "/greedy_ids.npy");
  KVCache cache = model->make_cache(64);
  EXPECT_EQ(testing::greedy_tokens(*model, cache, prompt, expected.size()), expected);
}

INSTANTIATE_TEST_SUITE_P(Models, MoeFixtureTest, ::testing::ValuesIn(kMoeFixtures));

// Layer 0 of the qwen3_moe fixture is dense (mlp_only_layers), layer 1 a MoE of 8 experts.
TEST(MoeModel, LayersFollowTheConfig) {
  ModelLoadOptions options;
  const auto model = load_model(fixture_dir("qwen3_moe"), options);
  EXPECT_FALSE(model->config().is_moe_layer(0));
  EXPECT_TRUE(model->config().is_moe_layer(1));
  EXPECT_EQ(moe_routing(model->config()).num_experts, 8);
  EXPECT_TRUE(moe_routing(model->config()).norm_topk_prob);
  EXPECT_FALSE(moe_routing(load_model_config(fixture_dir("qwen3_moe_nonorm"))).norm_topk_prob);
}

// Experts quantized like any linear: the error against the fp32 model grows as the format
// shrinks, and a saved checkpoint reloads to the same logits bit for bit.
TEST(MoeModel, QuantizedExpertsAndSaveLoad) {
  for (const char* name : {"qwen3_moe", "mixtral"}) {
    const std::string dir = fixture_dir(name);
    const Tensor ref = load_npy(dir + "/logits.npy");
    const Tensor ids = ids_tensor(load_ids(dir + "/prompt_ids.npy"));
    double errors[3];
    const int bits[3] = {8, 4, 2};
    for (int i = 0; i < 3; ++i) {
      ModelLoadOptions options;
      options.bits = bits[i];
      options.group_size = 32;
      const auto model = load_model(dir, options);
      const Tensor logits = model->forward(ids);
      errors[i] = relative_error(logits, ref);
      const fs::path out = fs::temp_directory_path() / ("marlin_moe_saved_" + std::string(name));
      fs::remove_all(out);
      save_quantized(*model, out.string());
      const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.string());
      const std::string expert0 = std::string(name) == "mixtral"
                                      ? "model.layers.1.block_sparse_moe.experts.0.w1"
                                      : "model.layers.1.mlp.experts.0.gate_proj";
      EXPECT_TRUE(saved.has(expert0 + ".weight_packed")) << expert0;
      EXPECT_TRUE(saved.has(std::string(name) == "mixtral" ? "model.layers.1.block_sparse_moe.gate.weight"
                                                           : "model.layers.1.mlp.gate.weight"));
      const Tensor reloaded = load_quantized(out.string())->forward(ids);
      EXPECT_EQ(testing::to_double(reloaded), testing::to_double(logits)) << name << " " << bits[i];
      fs::remove_all(out);
    }
    std::printf("[ %s ] relative logit error, group 32: FP8 %.3g, FP4 %.3g, INT2 %.3g\n", name,
                errors[0], errors[1], errors[2]);
    EXPECT_GT(errors[0], 0.0);
    EXPECT_LT(errors[0], errors[1]);
    EXPECT_LT(errors[1], errors[2]);
    EXPECT_LT(errors[0], 0.15);
  }
}

TEST(MoeModel, MissingExpertNamesTensorAndFile) {
  const fs::path dir = fs::temp_directory_path() / "marlin_moe_missing_expert";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("mixtral") + "/config.json", dir / "config.json");
  const SafetensorsCheckpoint src = SafetensorsCheckpoint::open(fixture_dir("mixtral"));
  NamedTensors tensors;
  for (const std::string& name : src.names())
    if (name != "model.layers.1.block_sparse_moe.experts.5.w2.weight")
      tensors.emplace_back(name, src.tensor(name));
  save_safetensors((dir / "model.safetensors").string(), tensors);
  const std::string msg = testing::error_message([&] { load_model(dir.string()); });
  EXPECT_NE(msg.find("model.layers.1.block_sparse_moe.experts.5.w2.weight"), std::string::npos) << msg;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace marlin
