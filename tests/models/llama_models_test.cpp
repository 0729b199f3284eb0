// The llama-family models against Transformers: fp32 logits of every position within 1e-4
// relative of the fixtures of tools/make_tiny_models.py, 32 greedy tokens through the KV cache,
// quantized runs, and load errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"
#include "model_test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

using testing::expect_chunked_prefill_matches_transformers;
using testing::expect_logits_match_transformers;
using testing::expect_quantized_error_order;
using testing::fixture_dir;
using testing::greedy_tokens;
using testing::ids_tensor;
using testing::load_ids;
using testing::relative_error;

class FixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureTest, LogitsMatchTransformersFp32) { expect_logits_match_transformers(GetParam(), 1e-4); }

TEST_P(FixtureTest, GreedyThroughKVCacheMatchesTransformers) {
  const std::string dir = fixture_dir(GetParam());
  const auto model = load_model(dir);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const std::vector<int32_t> expected = load_ids(dir + "/greedy_ids.npy");
  KVCache cache = model->make_cache(64);
  EXPECT_EQ(greedy_tokens(*model, cache, prompt, expected.size()), expected);
  EXPECT_EQ(cache.seq_len(), static_cast<int64_t>(prompt.size() + expected.size() - 1));
}

// The prompt fed in two chunks (prefill, then attention_extend over the cache) gives the
// logits of one prefill.
TEST_P(FixtureTest, ChunkedPrefillMatchesTransformers) {
  expect_chunked_prefill_matches_transformers(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureTest, ::testing::ValuesIn(kFixtures));

// Two different prompts as a batch [2, T] give each prompt's own logits, with and without a cache.
TEST(LlamaModel, BatchOfTwoPromptsMatchesSingleRuns) {
  const std::string dir = fixture_dir("qwen3");
  const auto model = load_model(dir);
  std::vector<int32_t> a = load_ids(dir + "/prompt_ids.npy"), b = a;
  std::reverse(b.begin(), b.end());
  KVCache cache = model->make_cache(static_cast<int64_t>(a.size()), 2);
  testing::expect_batch_of_two_matches_single_runs(*model, cache, a, b);
}

// FP8, FP4 and INT2 weights: the error against the fp32 model grows as the format shrinks.
TEST(LlamaModel, QuantizedErrorOrdersFp8Fp4Int2) {
  for (const char* name : {"llama_gqa", "qwen3"}) {
    const auto errors = expect_quantized_error_order(name);
    EXPECT_LT(errors[0], 0.15);
    EXPECT_LT(errors[2], 1.5);
  }
}

// A scratch model directory with the fixture's config and a checkpoint built from its tensors.
class ScratchModel {
 public:
  explicit ScratchModel(const std::string& tag)
      : dir_(fs::temp_directory_path() / ("marlin_models_test_" + tag)) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(fixture_dir("llama_gqa") + "/config.json", dir_ / "config.json");
  }
  ~ScratchModel() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  void write_config(const std::string& text) const { std::ofstream(dir_ / "config.json") << text; }
  // The fixture's tensors, minus `drop`, with `reshape` replaced by a [3, 5] tensor.
  void write_weights(const std::string& drop, const std::string& reshape = "",
                     DType dtype = DType::f32) const {
    const SafetensorsCheckpoint src = SafetensorsCheckpoint::open(fixture_dir("llama_gqa"));
    NamedTensors tensors;
    for (const std::string& name : src.names()) {
      if (name == drop) continue;
      Tensor t = src.tensor(name);
      if (name == reshape) t = Tensor::from_vector(std::vector<float>(15, 0.5f), {3, 5}, DType::f32);
      tensors.emplace_back(name, t.to(dtype));
    }
    save_safetensors((dir_ / "model.safetensors").string(), tensors);
  }

 private:
  fs::path dir_;
};

using testing::error_message;

// An fp16 checkpoint loads like the fp32 one it was rounded from.
TEST(LlamaModel, Fp16CheckpointLoads) {
  ScratchModel m("fp16");
  m.write_weights("", "", DType::f16);
  ASSERT_EQ(SafetensorsCheckpoint::open(m.dir()).info("model.norm.weight").dtype, DType::f16);
  const std::string dir = fixture_dir("llama_gqa");
  const Tensor ref = load_npy(dir + "/logits.npy");
  const Tensor ids = ids_tensor(load_ids(dir + "/prompt_ids.npy"));
  const double err = relative_error(load_model(m.dir())->forward(ids), ref);
  std::printf("[ llama_gqa fp16 checkpoint ] relative logit error vs fp32 %.3g\n", err);
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, 1e-2);
}

TEST(LlamaModelErrors, MissingTensorNamesTensorAndFile) {
  ScratchModel m("missing");
  m.write_weights("model.layers.1.mlp.up_proj.weight");
  const std::string msg = error_message([&] { load_model(m.dir()); });
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
}

TEST(LlamaModelErrors, WrongShapeNamesTensorAndShapes) {
  ScratchModel m("shape");
  m.write_weights("", "model.layers.0.self_attn.k_proj.weight");
  const std::string msg = error_message([&] { load_model(m.dir()); });
  EXPECT_NE(msg.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 5]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[64, 64]"), std::string::npos) << msg;
}

TEST(LlamaModelErrors, UnsupportedModelTypeListsSupportedOnes) {
  ScratchModel m("type");
  std::ifstream in(fixture_dir("llama_gqa") + "/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string from = "\"model_type\": \"llama\"";
  ASSERT_NE(text.find(from), std::string::npos);
  text.replace(text.find(from), from.size(), "\"model_type\": \"gemma\"");
  m.write_config(text);
  m.write_weights("");
  const std::string msg = error_message([&] { load_model(m.dir()); });
  EXPECT_NE(msg.find("gemma"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama, mistral, qwen2, qwen3"), std::string::npos) << msg;
}

TEST(LlamaModelErrors, BadBitsGroupSizeContextAndCache) {
  const std::string dir = fixture_dir("llama_gqa");
  ModelLoadOptions options;
  options.bits = 3;
  EXPECT_NE(error_message([&] { load_model(dir, options); }).find("bits"), std::string::npos);
  options.bits = 4;
  options.group_size = 128;  // K = 64 is not a multiple of it
  EXPECT_NE(error_message([&] { load_model(dir, options); }), "");
  const auto model = load_model(dir);
  const std::vector<int32_t> long_prompt(300, 5);  // max_position_embeddings is 256
  EXPECT_NE(error_message([&] { model->forward(ids_tensor(long_prompt)); }).find("context"),
            std::string::npos);
  KVCache cache = model->make_cache(4);
  EXPECT_NE(error_message([&] { model->forward(ids_tensor({3, 4, 5, 6, 7}), &cache); }).find("max_seq_len"),
            std::string::npos);
  EXPECT_NE(error_message([&] { model->forward(ids_tensor({3, 999})); }).find("999"), std::string::npos);
  EXPECT_NE(error_message([&] { load_model(fixture_dir("no_such_model")); }), "");
}

}  // namespace
}  // namespace marlin
