// quantize_linear_layers / load_and_quantize (the original replace_linear_layers): counts per
// fixture, skip_layers and layer_filter by Hugging Face module paths, logits equal to
// load_model at the same bits, and save_quantized of the result (skipped modules recorded,
// loads back bit for bit, q/k/v fused again only where their bits agree).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"
#include "models/llama.h"
#include "model_test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::error_message;

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

using testing::fixture_dir;
using testing::read_json;

// A fresh scratch directory marlin_qlayers_<tag>, removed afterwards.
struct TempDir : testing::TempDir {
  explicit TempDir(const std::string& tag) : testing::TempDir("marlin_qlayers_" + tag) {}
};

const LlamaModel& llama(const CausalLM& m) { return dynamic_cast<const LlamaModel&>(m); }

// Bits of every linear by module path.
std::map<std::string, int> bits_by_name(const CausalLM& m) {
  std::map<std::string, int> out;
  llama(m).for_each_linear([&](const std::string& name, const QuantizedLinear& l) { out[name] = l.bits(); });
  return out;
}

// The input features of each linear of a llama-family layer, from the config (independent of
// the code under test).
std::vector<std::pair<std::string, int64_t>> layer_linears(const json& c) {
  const int64_t H = c["hidden_size"], I = c["intermediate_size"], Hq = c["num_attention_heads"];
  const int64_t D = c.contains("head_dim") && !c["head_dim"].is_null() ? c["head_dim"].get<int64_t>() : H / Hq;
  return {{"self_attn.q_proj", H}, {"self_attn.k_proj", H}, {"self_attn.v_proj", H},
          {"self_attn.o_proj", Hq * D}, {"mlp.gate_proj", H}, {"mlp.up_proj", H}, {"mlp.down_proj", I}};
}

Tensor prompt(const std::string& dir) { return load_npy(dir + "/prompt_ids.npy"); }

class FixtureQuantize : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureQuantize, CountsFollowTheShapes) {
  const std::string dir = fixture_dir(GetParam());
  const json config = read_json(fs::path(dir) / "config.json");
  const int64_t layers = config["num_hidden_layers"];
  for (const int group : {32, 128}) {
    // A layer is replaced where its in_features is a multiple of the group size; lm_head is
    // skipped by default.
    int64_t want_replaced = 0, want_skipped = 1;
    for (const auto& [name, in] : layer_linears(config)) (in % group == 0 ? want_replaced : want_skipped) += layers;
    const auto model = load_model(dir);
    const QuantizeStats stats = quantize_linear_layers(*model, 4, group);
    EXPECT_EQ(stats.replaced, want_replaced) << GetParam() << " g" << group;
    EXPECT_EQ(stats.skipped, want_skipped) << GetParam() << " g" << group;
    int64_t quantized = 0;
    for (const auto& [name, bits] : bits_by_name(*model)) quantized += bits == 4;
    EXPECT_EQ(quantized, want_replaced) << GetParam();
    EXPECT_EQ(bits_by_name(*model).at("lm_head"), 16);
    // A second call finds nothing left to quantize but lm_head, which it skips again.
    const QuantizeStats again = quantize_linear_layers(*model, 4, group);
    EXPECT_EQ(again.replaced, 0);
    EXPECT_EQ(again.skipped, want_skipped);
  }
}

TEST_P(FixtureQuantize, LogitsEqualLoadModelAtTheSameBits) {
  const std::string dir = fixture_dir(GetParam());
  const Tensor ids = prompt(dir);
  for (const int bits : {8, 4, 2}) {
    QuantizedModel q = load_and_quantize(dir, bits, 32);
    EXPECT_EQ(q.stats.skipped, 1);  // lm_head
    ModelLoadOptions options;
    options.bits = bits;
    options.group_size = 32;
    const auto reference = load_model(dir, options);
    EXPECT_EQ(q.model->forward(ids).to_float_vector(), reference->forward(ids).to_float_vector())
        << GetParam() << " bits " << bits;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureQuantize, ::testing::ValuesIn(kFixtures));

TEST(QuantizeLinearLayers, SkipLayersAndFilterSelectByModulePath) {
  const std::string dir = fixture_dir("llama_gqa");
  const auto model = load_model(dir);
  std::vector<std::string> asked;
  const QuantizeStats stats = quantize_linear_layers(
      *model, 8, 32, std::vector<std::string>{"model.layers.0.self_attn.k_proj", "mlp.down_proj"},
      [&](const std::string& name, const QuantizedLinear& layer) {
        asked.push_back(name);
        EXPECT_EQ(layer.bits(), 16) << name;
        return name != "model.layers.1.self_attn.q_proj";
      });
  // The filter is asked only about layers the skip list left, with their module paths; lm_head
  // is a candidate once the default skip list is replaced.
  const std::vector<std::string> want_asked = {
      "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
      "model.layers.0.mlp.gate_proj",    "model.layers.0.mlp.up_proj",      "model.layers.1.self_attn.q_proj",
      "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
      "model.layers.1.mlp.gate_proj",    "model.layers.1.mlp.up_proj",      "lm_head"};
  EXPECT_EQ(asked, want_asked);
  EXPECT_EQ(stats.replaced, 11);  // 12 asked, one refused
  EXPECT_EQ(stats.skipped, 4);    // k_proj of layer 0, two down_proj, q_proj of layer 1
  const std::map<std::string, int> bits = bits_by_name(*model);
  for (const std::string skipped : {"model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj",
                                    "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"})
    EXPECT_EQ(bits.at(skipped), 16) << skipped;
  EXPECT_EQ(bits.at("lm_head"), 8);
  EXPECT_EQ(bits.at("model.layers.0.self_attn.q_proj"), 8);
  // q/k/v fused only where all three share bits: neither layer here; gate+up in both.
  for (const TransformerBlock& b : llama(*model).layers()) {
    EXPECT_FALSE(b.self_attn().qkv_proj().fused());
    EXPECT_TRUE(b.mlp().gate_up_proj().fused());
  }
}

TEST(QuantizeLinearLayers, MixedBitsKeepQkvApartAndMatchTheUnfusedModel) {
  const std::string dir = fixture_dir("qwen2");  // q/k/v with bias
  const std::vector<std::string> skip = {"lm_head", "layers.1.self_attn.v_proj"};
  const auto fused = load_model(dir);
  quantize_linear_layers(*fused, 4, 32, skip);
  EXPECT_TRUE(llama(*fused).layers()[0].self_attn().qkv_proj().fused());
  EXPECT_FALSE(llama(*fused).layers()[1].self_attn().qkv_proj().fused());
  ModelLoadOptions unfused_options;
  unfused_options.fuse_projections = false;
  const auto unfused = load_model(dir, unfused_options);
  quantize_linear_layers(*unfused, 4, 32, skip);
  EXPECT_FALSE(llama(*unfused).layers()[0].self_attn().qkv_proj().fused());
  const Tensor ids = prompt(dir);
  EXPECT_EQ(fused->forward(ids).to_float_vector(), unfused->forward(ids).to_float_vector());
}

TEST(QuantizeLinearLayers, SavedSkippedModulesAreRecordedAndLoadBackEqual) {
  const std::string dir = fixture_dir("llama_gqa");
  const auto model = load_model(dir);
  const std::vector<std::string> skip = {"lm_head", "model.layers.1.self_attn.k_proj", "layers.0.mlp.up_proj"};
  quantize_linear_layers(*model, 4, 32, skip, nullptr, ScaleMethod::mse);
  TempDir out("skipped");
  save_quantized(*model, out.str());

  const json q = read_json(out.path() / "config.json")["quantization_config"];
  EXPECT_EQ(q["bits"], 4);
  EXPECT_EQ(q["group_size"], 32);
  EXPECT_EQ(q["scales"], "mse");
  std::vector<std::string> not_converted = q["modules_not_converted"].get<std::vector<std::string>>();
  std::sort(not_converted.begin(), not_converted.end());
  const std::vector<std::string> want = {"lm_head", "model.embed_tokens", "model.layers.0.mlp.up_proj",
                                         "model.layers.1.self_attn.k_proj"};
  EXPECT_EQ(not_converted, want);
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.str());
  EXPECT_TRUE(saved.has("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_FALSE(saved.has("model.layers.1.self_attn.k_proj.weight_packed"));
  EXPECT_TRUE(saved.has("model.layers.0.self_attn.k_proj.weight_packed"));
  EXPECT_TRUE(saved.has("model.layers.0.mlp.up_proj.weight"));

  const auto loaded = load_quantized(out.str());
  EXPECT_EQ(bits_by_name(*loaded), bits_by_name(*model));
  EXPECT_TRUE(llama(*loaded).layers()[0].self_attn().qkv_proj().fused());
  EXPECT_FALSE(llama(*loaded).layers()[1].self_attn().qkv_proj().fused());
  EXPECT_FALSE(llama(*loaded).layers()[0].mlp().gate_up_proj().fused());
  EXPECT_TRUE(llama(*loaded).layers()[1].mlp().gate_up_proj().fused());
  const Tensor ids = prompt(dir);
  EXPECT_EQ(loaded->forward(ids).to_float_vector(), model->forward(ids).to_float_vector());
}

TEST(QuantizeLinearLayers, QuantizedTiedLmHeadIsSavedUntied) {
  const std::string dir = fixture_dir("qwen3");  // tied embeddings
  const auto model = load_model(dir);
  const QuantizeStats stats = quantize_linear_layers(*model, 8, 32, std::vector<std::string>{});
  EXPECT_EQ(stats.skipped, 0);
  EXPECT_EQ(bits_by_name(*model).at("lm_head"), 8);
  TempDir out("tied");
  save_quantized(*model, out.str());
  const json config = read_json(out.path() / "config.json");
  EXPECT_EQ(config["tie_word_embeddings"], false);
  EXPECT_EQ(config["quantization_config"]["modules_not_converted"], json::array({"model.embed_tokens"}));
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.str());
  EXPECT_TRUE(saved.has("lm_head.weight_packed"));
  const auto loaded = load_quantized(out.str());
  EXPECT_EQ(bits_by_name(*loaded).at("lm_head"), 8);
  const Tensor ids = prompt(dir);
  EXPECT_EQ(loaded->forward(ids).to_float_vector(), model->forward(ids).to_float_vector());
}

TEST(QuantizeLinearLayers, ErrorsNameTheProblem) {
  const std::string dir = fixture_dir("llama_gqa");
  const auto model = load_model(dir);
  EXPECT_NE(error_message([&] { quantize_linear_layers(*model, 3); }).find("bits must be 8, 4 or 2, got 3"),
            std::string::npos);
  EXPECT_NE(error_message([&] { quantize_linear_layers(*model, 4, 48); }).find("group_size"), std::string::npos);
  EXPECT_NE(error_message([&] { load_and_quantize(dir, 16); }).find("[load_and_quantize]"), std::string::npos);
  const std::string missing = error_message([&] { load_and_quantize(dir + "/nowhere", 4, 32); });
  EXPECT_NE(missing.find("nowhere"), std::string::npos) << missing;
  // Models quantized to two formats cannot share one checkpoint.
  quantize_linear_layers(*model, 4, 32, std::vector<std::string>{"mlp"});
  quantize_linear_layers(*model, 8, 32);
  TempDir out("mixed");
  const std::string msg = error_message([&] { save_quantized(*model, out.str()); });
  EXPECT_NE(msg.find("one format"), std::string::npos) << msg;
}

}  // namespace
}  // namespace marlin
