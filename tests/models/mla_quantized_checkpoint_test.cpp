// save_quantized / load_quantized and quantize_linear_layers / load_and_quantize for the MLA
// models (glm4_moe_lite, deepseek_v3, deepseek_v2 without q_lora, yarn rope): a saved model runs
// bit for bit as the in-memory one at 8/4/2 bits and 16 (prefill and absorbed decode through the
// latent cache), routers, score biases and norms stay 16-bit, experts and shared experts are
// stored packed like any linear, and what a checkpoint cannot hold is an error saying why.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"
#include "test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::error_message;

const char* const kFixtures[] = {"glm4_moe_lite", "deepseek_v3", "deepseek_v2", "deepseek_v2_yarn"};

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

class TempDir {
 public:
  explicit TempDir(const std::string& tag)
      : dir_(fs::temp_directory_path() / ("marlin_mla_qckpt_test_" + tag)) {
    fs::remove_all(dir_);
  }
  ~TempDir() { fs::remove_all(dir_); }
  std::string str() const { return dir_.string(); }
  fs::path path() const { return dir_; }

 private:
  fs::path dir_;
};

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

bool module_list_has(const json& list, const std::string& name) {
  for (const json& m : list)
    if (m == name) return true;
  return false;
}

// Logits of the prompt's prefill (expanded attention) and of two decode steps after it
// (absorbed attention over the latent cache).
std::vector<float> prefill_and_decode(const CausalLM& model, const Tensor& ids) {
  std::vector<float> out = model.forward(ids).to_float_vector();
  KVCache cache = model.make_cache(ids.numel() + 4);
  model.forward(ids, &cache);
  for (const int32_t next : {3, 17}) {
    const std::vector<float> step =
        model.forward(Tensor::from_vector(std::vector<int32_t>{next}, {1}, DType::i32), &cache)
            .to_float_vector();
    out.insert(out.end(), step.begin(), step.end());
  }
  return out;
}

class MlaSaveLoad : public ::testing::TestWithParam<std::tuple<const char*, int>> {};

TEST_P(MlaSaveLoad, SavedRunsBitForBitAsInMemory) {
  const auto [name, bits] = GetParam();
  const std::string dir = fixture_dir(name);
  TempDir out(std::string(name) + "_" + std::to_string(bits));
  ModelLoadOptions options;
  options.bits = bits;
  options.group_size = 32;  // every in_features of the fixtures is a multiple of 32
  const auto model = load_model(dir, options);
  save_quantized(*model, out.str());

  const json config = read_json(out.path() / "config.json");
  EXPECT_EQ(config["model_type"], read_json(fs::path(dir) / "config.json")["model_type"]);
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.str());
  const SafetensorsCheckpoint orig = SafetensorsCheckpoint::open(dir);
  const std::string expert = "model.layers.1.mlp.experts.3.down_proj";
  const std::string shared = "model.layers.2.mlp.shared_experts.gate_proj";
  const std::string attn = "model.layers.1.self_attn.kv_b_proj";
  if (bits == 16) {
    EXPECT_FALSE(config.contains("quantization_config"));
    for (const std::string& p : {expert, shared, attn})
      EXPECT_TRUE(same_bytes(saved.tensor(p + ".weight"), orig.tensor(p + ".weight"))) << p;
  } else {
    const json& q = config["quantization_config"];
    EXPECT_EQ(q["bits"], bits);
    EXPECT_EQ(q["group_size"], 32);
    for (const std::string& p : {expert, shared, attn}) {
      EXPECT_TRUE(saved.has(p + ".weight_packed")) << p;
      EXPECT_TRUE(saved.has(p + ".weight_scale")) << p;
      EXPECT_FALSE(saved.has(p + ".weight")) << p;
    }
    EXPECT_TRUE(module_list_has(q["modules_not_converted"], "lm_head"));
  }
  // Routers, score biases, norms (the latent ones included), embeddings and lm_head are kept
  // exactly as the checkpoint had them (f32 here).
  std::vector<std::string> kept = {"model.layers.1.mlp.gate.weight", "model.embed_tokens.weight",
                                   "lm_head.weight", "model.norm.weight",
                                   "model.layers.2.self_attn.kv_a_layernorm.weight",
                                   "model.layers.0.post_attention_layernorm.weight"};
  if (orig.has("model.layers.1.mlp.gate.e_score_correction_bias"))
    kept.push_back("model.layers.1.mlp.gate.e_score_correction_bias");
  if (orig.has("model.layers.0.self_attn.q_a_layernorm.weight"))
    kept.push_back("model.layers.0.self_attn.q_a_layernorm.weight");
  for (const std::string& n : kept) {
    ASSERT_TRUE(saved.has(n)) << n;
    EXPECT_TRUE(same_bytes(saved.tensor(n), orig.tensor(n))) << n;
  }

  const Tensor ids = load_npy(dir + "/prompt_ids.npy");
  const std::vector<float> expected = prefill_and_decode(*model, ids);
  EXPECT_EQ(prefill_and_decode(*load_quantized(out.str()), ids), expected);
  EXPECT_EQ(prefill_and_decode(*load_model(out.str()), ids), expected);
}

INSTANTIATE_TEST_SUITE_P(Models, MlaSaveLoad,
                         ::testing::Combine(::testing::ValuesIn(kFixtures),
                                            ::testing::Values(16, 8, 4, 2)));

// Linears per layer of glm4_moe_lite: q_a, q_b, kv_a, kv_b, o; a dense MLP's 3 (layer 0) or 8
// experts' and the shared expert's 3 each (layers 1 and 2); lm_head.
constexpr int64_t kGlmLinears = 5 * 3 + 3 + 2 * (8 + 1) * 3;

TEST(MlaQuantizeLinearLayers, CountsAndLogitsEqualLoadModelAtTheSameBits) {
  for (const char* name : kFixtures) {
    const std::string dir = fixture_dir(name);
    const Tensor ids = load_npy(dir + "/prompt_ids.npy");
    for (const int bits : {8, 4, 2}) {
      QuantizedModel q = load_and_quantize(dir, bits, 32);
      EXPECT_EQ(q.stats.skipped, 1) << name;  // lm_head
      if (std::string(name) == "glm4_moe_lite") {
        EXPECT_EQ(q.stats.replaced, kGlmLinears);
      }
      ModelLoadOptions options;
      options.bits = bits;
      options.group_size = 32;
      EXPECT_EQ(prefill_and_decode(*q.model, ids), prefill_and_decode(*load_model(dir, options), ids))
          << name << " bits " << bits;
    }
  }
}

TEST(MlaQuantizeLinearLayers, SkippedExpertsAndQuantizedLmHeadRoundTrip) {
  const std::string dir = fixture_dir("glm4_moe_lite");
  const auto model = load_model(dir);
  // Experts by module path (layer 1's expert 2 stays 16-bit), lm_head quantized once the
  // default skip list is replaced.
  const QuantizeStats stats =
      quantize_linear_layers(*model, 4, 32, std::vector<std::string>{"layers.1.mlp.experts.2."});
  EXPECT_EQ(stats.skipped, 3);
  EXPECT_EQ(stats.replaced, kGlmLinears + 1 - 3);
  TempDir out("skipped");
  save_quantized(*model, out.str());
  const json q = read_json(out.path() / "config.json")["quantization_config"];
  EXPECT_TRUE(module_list_has(q["modules_not_converted"], "model.layers.1.mlp.experts.2.up_proj"));
  EXPECT_FALSE(module_list_has(q["modules_not_converted"], "lm_head"));
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.str());
  EXPECT_TRUE(saved.has("lm_head.weight_packed"));
  EXPECT_TRUE(saved.has("model.layers.1.mlp.experts.2.up_proj.weight"));
  EXPECT_TRUE(saved.has("model.layers.2.mlp.experts.2.up_proj.weight_packed"));
  const Tensor ids = load_npy(dir + "/prompt_ids.npy");
  EXPECT_EQ(prefill_and_decode(*load_quantized(out.str()), ids), prefill_and_decode(*model, ids));
}

TEST(MlaQuantizedCheckpointErrors, MixedExpertWidthsAndMissingRouterNameTheProblem) {
  const std::string dir = fixture_dir("deepseek_v3");
  // Per-expert widths (expert 0 at INT2, the rest FP4) run but a checkpoint holds one format.
  const auto model = load_model(dir);
  quantize_linear_layers(*model, 4, 32, std::vector<std::string>{"lm_head", "mlp.experts.0."});
  quantize_linear_layers(*model, 2, 32);
  TempDir mixed("mixed");
  const std::string msg = error_message([&] { save_quantized(*model, mixed.str()); });
  EXPECT_NE(msg.find("[save_quantized]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("experts.0."), std::string::npos) << msg;
  EXPECT_NE(msg.find("one format"), std::string::npos) << msg;

  // A saved checkpoint without a router names the tensor and the file.
  ModelLoadOptions options;
  options.bits = 4;
  options.group_size = 32;
  TempDir out("norouter");
  save_quantized(*load_model(dir, options), out.str());
  const std::string router = "model.layers.2.mlp.gate.weight";
  NamedTensors tensors;
  {
    const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(out.str());
    for (const std::string& n : ckpt.names()) {
      if (n == router) continue;
      const Tensor t = ckpt.tensor(n).contiguous();
      Tensor copy = Tensor::empty(t.shape(), t.dtype());
      std::memcpy(copy.data_ptr(), t.data_ptr(), t.nbytes());
      tensors.emplace_back(n, copy);
    }
  }
  save_safetensors((out.path() / "model.safetensors").string(), tensors);
  const std::string missing = error_message([&] { load_quantized(out.str()); });
  EXPECT_NE(missing.find(router), std::string::npos) << missing;
  EXPECT_NE(missing.find("model.safetensors"), std::string::npos) << missing;
  // quantize_linear_layers checks the format before touching the model.
  EXPECT_NE(error_message([&] { load_and_quantize(dir, 3, 32); }).find("[load_and_quantize]"),
            std::string::npos);
}

}  // namespace
}  // namespace marlin
