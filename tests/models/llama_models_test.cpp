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
#include "test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::vector<int32_t> load_ids(const std::string& path) {
  const Tensor t = load_npy(path);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

Tensor ids_tensor(const std::vector<int32_t>& ids) {
  return Tensor::from_vector(ids, {static_cast<int64_t>(ids.size())}, DType::i32);
}

// ||a - b|| / ||b|| over all elements.
double relative_error(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_float_vector(), y = b.to_float_vector();
  EXPECT_EQ(x.size(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    den += double(y[i]) * y[i];
  }
  return std::sqrt(num / den);
}

int32_t argmax_last_row(const Tensor& logits) {
  const std::vector<float> v = logits.to_float_vector();
  const int64_t V = logits.size(-1);
  const float* row = v.data() + v.size() - V;
  return static_cast<int32_t>(std::max_element(row, row + V) - row);
}

class FixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureTest, LogitsMatchTransformersFp32) {
  const std::string dir = fixture_dir(GetParam());
  const auto model = load_model(dir);
  const Tensor ref = load_npy(dir + "/logits.npy");
  const Tensor logits = model->forward(ids_tensor(load_ids(dir + "/prompt_ids.npy")));
  ASSERT_EQ(logits.shape(), ref.shape());
  const double err = relative_error(logits, ref);
  std::printf("[ %s ] fp32 logits relative error %.3g\n", GetParam(), err);
  EXPECT_LT(err, 1e-4);
}

TEST_P(FixtureTest, GreedyThroughKVCacheMatchesTransformers) {
  const std::string dir = fixture_dir(GetParam());
  const auto model = load_model(dir);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const std::vector<int32_t> expected = load_ids(dir + "/greedy_ids.npy");
  KVCache cache = model->make_cache(64);
  Tensor logits = model->forward(ids_tensor(prompt), &cache);
  std::vector<int32_t> got;
  for (size_t step = 0; step < expected.size(); ++step) {
    got.push_back(argmax_last_row(logits));
    if (step + 1 < expected.size()) logits = model->forward(ids_tensor({got.back()}), &cache);
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(cache.seq_len(), static_cast<int64_t>(prompt.size() + expected.size() - 1));
}

// The prompt fed in two chunks (prefill, then attention_extend over the cache) gives the
// logits of one prefill.
TEST_P(FixtureTest, ChunkedPrefillMatchesTransformers) {
  const std::string dir = fixture_dir(GetParam());
  const auto model = load_model(dir);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const Tensor ref = load_npy(dir + "/logits.npy");
  KVCache cache = model->make_cache(32);
  const int64_t split = 5, T = static_cast<int64_t>(prompt.size());
  model->forward(ids_tensor({prompt.begin(), prompt.begin() + split}), &cache);
  const Tensor tail = model->forward(ids_tensor({prompt.begin() + split, prompt.end()}), &cache);
  EXPECT_LT(relative_error(tail, ref.narrow(0, split, T - split).contiguous()), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureTest, ::testing::ValuesIn(kFixtures));

// Two different prompts as a batch [2, T] give each prompt's own logits, with and without a cache.
TEST(LlamaModel, BatchOfTwoPromptsMatchesSingleRuns) {
  const std::string dir = fixture_dir("qwen3");
  const auto model = load_model(dir);
  std::vector<int32_t> a = load_ids(dir + "/prompt_ids.npy"), b = a;
  std::reverse(b.begin(), b.end());
  std::vector<int32_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  const int64_t T = static_cast<int64_t>(a.size());
  const Tensor batch_ids = Tensor::from_vector(both, {2, T}, DType::i32);
  const Tensor la = model->forward(ids_tensor(a)), lb = model->forward(ids_tensor(b));
  const Tensor batch = model->forward(batch_ids);
  ASSERT_EQ(batch.shape(), (Shape{2, T, model->config().vocab_size}));
  EXPECT_LT(relative_error(batch.select(0, 0).contiguous(), la), 1e-5);
  EXPECT_LT(relative_error(batch.select(0, 1).contiguous(), lb), 1e-5);
  KVCache cache = model->make_cache(T, 2);
  const Tensor cached = model->forward(batch_ids, &cache);
  EXPECT_LT(relative_error(cached.select(0, 1).contiguous(), lb), 1e-5);
}

// FP8, FP4 and INT2 weights: the error against the fp32 model grows as the format shrinks.
TEST(LlamaModel, QuantizedErrorOrdersFp8Fp4Int2) {
  for (const char* name : {"llama_gqa", "qwen3"}) {
    const std::string dir = fixture_dir(name);
    const Tensor ref = load_npy(dir + "/logits.npy");
    const Tensor ids = ids_tensor(load_ids(dir + "/prompt_ids.npy"));
    double errors[3];
    const int bits[3] = {8, 4, 2};
    for (int i = 0; i < 3; ++i) {
      ModelLoadOptions options;
      options.bits = bits[i];
      options.group_size = 32;
      errors[i] = relative_error(load_model(dir, options)->forward(ids), ref);
    }
    std::printf("[ %s ] relative logit error, group 32: FP8 %.3g, FP4 %.3g, INT2 %.3g\n", name,
                errors[0], errors[1], errors[2]);
    EXPECT_GT(errors[0], 0.0);
    EXPECT_LT(errors[0], errors[1]);
    EXPECT_LT(errors[1], errors[2]);
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
