// save_quantized -> load_quantized: a saved quantized model runs bit for bit as the in-memory one
// (the packed weights are stored, never re-quantized), a 16-bit save is a plain checkpoint, and
// broken checkpoints are errors naming the file or tensor.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/ops.h"
#include "marlin/safetensors.h"
#include "model_test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string fixture() { return testing::fixture_dir("llama_gqa"); }

Tensor prompt() {
  return load_npy(fixture() + "/prompt_ids.npy");
}

// A fresh scratch directory marlin_qckpt_test_<tag>, removed afterwards.
struct TempDir : testing::TempDir {
  explicit TempDir(const std::string& tag) : testing::TempDir("marlin_qckpt_test_" + tag) {}
};

std::unique_ptr<CausalLM> quantized_fixture(int bits) {
  ModelLoadOptions options;
  options.bits = bits;
  options.group_size = 32;  // the fixture's dims are 64
  return load_model(fixture(), options);
}

using testing::read_json;

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

using testing::error_message;

class SaveLoadTest : public ::testing::TestWithParam<int> {};

TEST_P(SaveLoadTest, LogitsBitIdenticalAndPackedWeightsStored) {
  const int bits = GetParam();
  TempDir out("bits" + std::to_string(bits));
  const auto model = quantized_fixture(bits);
  save_quantized(*model, out.str());

  const json config = read_json(out.path() / "config.json");
  ASSERT_TRUE(config.contains("quantization_config"));
  const json& q = config["quantization_config"];
  EXPECT_EQ(q["quant_method"], "marlin");
  EXPECT_EQ(q["bits"], bits);
  EXPECT_EQ(q["group_size"], 32);
  EXPECT_EQ(q["format"], std::string(format_name(format_from_bits(bits))));
  EXPECT_EQ(q["scales"], "rtn");
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_TRUE(fs::exists(out.path() / "generation_config.json"));

  // The stored codes and scales are the in-memory quantizer's, in the canonical layout.
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.str());
  const SafetensorsCheckpoint orig = SafetensorsCheckpoint::open(fixture());
  for (const std::string p : {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}) {
    EXPECT_FALSE(saved.has(p + ".weight")) << p;
    QuantizeOptions qo;
    qo.group_size = 32;
    const QuantizedWeight ref = ops::quantize(
        orig.tensor(p + ".weight").transpose(0, 1).contiguous(), format_from_bits(bits), qo);
    EXPECT_TRUE(same_bytes(saved.tensor(p + ".weight_packed"), ref.packed)) << p;
    EXPECT_TRUE(same_bytes(saved.tensor(p + ".weight_scale"), ref.scales)) << p;
  }
  // Embeddings and lm_head stay 16-bit (here: the fixture's f32), exactly as they were.
  for (const std::string n : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"})
    EXPECT_TRUE(same_bytes(saved.tensor(n), orig.tensor(n))) << n;

  const Tensor ids = prompt();
  const std::vector<float> expected = model->forward(ids).to_float_vector();
  EXPECT_EQ(load_quantized(out.str())->forward(ids).to_float_vector(), expected);
  // load_model routes a saved directory to the same path.
  EXPECT_EQ(load_model(out.str())->forward(ids).to_float_vector(), expected);
}

INSTANTIATE_TEST_SUITE_P(Formats, SaveLoadTest, ::testing::Values(8, 4, 2));

TEST(QuantizedCheckpoint, Bits16RoundTripMatchesOriginal) {
  TempDir out("bits16");
  const auto model = load_model(fixture());
  save_quantized(*model, out.str());
  EXPECT_FALSE(read_json(out.path() / "config.json").contains("quantization_config"));
  const Tensor ids = prompt();
  EXPECT_EQ(load_quantized(out.str())->forward(ids).to_float_vector(),
            model->forward(ids).to_float_vector());
}

// Every fixture (tied lm_head, q/k/v bias, q/k norm, a bf16 checkpoint) round-trips at 16 and
// 4 bits: the saved directory runs bit for bit as the model it was saved from.
class FixtureRoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureRoundTrip, SavedRunsAsInMemory) {
  const std::string dir = std::string(MARLIN_TEST_FIXTURES) + "/models/" + GetParam();
  const Tensor ids = load_npy(dir + "/prompt_ids.npy");
  for (const int bits : {16, 4}) {
    TempDir out(std::string(GetParam()) + "_" + std::to_string(bits));
    ModelLoadOptions options;
    options.bits = bits;
    options.group_size = 32;
    const auto model = load_model(dir, options);
    save_quantized(*model, out.str());
    EXPECT_EQ(load_quantized(out.str())->forward(ids).to_float_vector(),
              model->forward(ids).to_float_vector())
        << GetParam() << " bits " << bits;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureRoundTrip,
                         ::testing::Values("llama_gqa", "llama_tied", "mistral", "qwen2",
                                           "qwen2_bf16", "qwen3"));

TEST(QuantizedCheckpoint, MseScalesRecorded) {
  TempDir out("mse");
  ModelLoadOptions options;
  options.bits = 4;
  options.group_size = 32;
  options.scales = ScaleMethod::mse;
  const auto model = load_model(fixture(), options);
  save_quantized(*model, out.str());
  EXPECT_EQ(read_json(out.path() / "config.json")["quantization_config"]["scales"], "mse");
  const Tensor ids = prompt();
  EXPECT_EQ(load_quantized(out.str())->forward(ids).to_float_vector(),
            model->forward(ids).to_float_vector());
}

// A saved 4-bit checkpoint whose tensors pass through `edit` (name, tensor) -> keep?
void rewrite_weights(const TempDir& dir,
                     const std::function<bool(const std::string&, Tensor&)>& edit) {
  NamedTensors tensors;
  {
    const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(dir.str());
    for (const std::string& name : ckpt.names()) {
      Tensor t = ckpt.tensor(name).contiguous();
      Tensor copy = Tensor::empty(t.shape(), t.dtype());
      std::memcpy(copy.data_ptr(), t.data_ptr(), t.nbytes());
      if (edit(name, copy)) tensors.emplace_back(name, copy);
    }
  }
  save_safetensors((dir.path() / "model.safetensors").string(), tensors);
}

TEST(QuantizedCheckpointErrors, MissingPackedTensorNamesTensorAndFile) {
  TempDir out("missing");
  save_quantized(*quantized_fixture(4), out.str());
  const std::string name = "model.layers.1.mlp.up_proj.weight_scale";
  rewrite_weights(out, [&](const std::string& n, Tensor&) { return n != name; });
  const std::string msg = error_message([&] { load_quantized(out.str()); });
  EXPECT_NE(msg.find(name), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
}

TEST(QuantizedCheckpointErrors, WrongShapeNamesTensorAndShapes) {
  TempDir out("shape");
  save_quantized(*quantized_fixture(4), out.str());
  const std::string name = "model.layers.0.self_attn.k_proj.weight_packed";
  rewrite_weights(out, [&](const std::string& n, Tensor& t) {
    if (n == name) t = Tensor::from_vector(std::vector<uint32_t>(15, 0u), {3, 5}, DType::u32);
    return true;
  });
  const std::string msg = error_message([&] { load_quantized(out.str()); });
  EXPECT_NE(msg.find(name), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 5]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 64]"), std::string::npos) << msg;
}

TEST(QuantizedCheckpointErrors, CorruptQuantizationConfigNamesKeyAndFile) {
  TempDir out("config");
  save_quantized(*quantized_fixture(4), out.str());
  const fs::path path = out.path() / "config.json";
  const json good = read_json(path);
  const std::pair<std::string, json> cases[] = {
      {"bits", "four"}, {"bits", 3}, {"group_size", 0}, {"format", "int2"}, {"quant_method", "gptq"}};
  for (const auto& [key, value] : cases) {
    json bad = good;
    bad["quantization_config"][key] = value;
    std::ofstream(path) << bad.dump(2);
    const std::string msg = error_message([&] { load_quantized(out.str()); });
    EXPECT_NE(msg.find("quantization_config." + key), std::string::npos) << key << ": " << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << key << ": " << msg;
  }
  json bad = good;
  bad["quantization_config"] = "marlin";
  std::ofstream(path) << bad.dump(2);
  EXPECT_NE(error_message([&] { load_quantized(out.str()); }).find("quantization_config"), std::string::npos);
}

TEST(QuantizedCheckpointErrors, MissingFilesAndBitsMismatch) {
  TempDir out("files");
  save_quantized(*quantized_fixture(4), out.str());
  ModelLoadOptions eight;
  eight.bits = 8;
  EXPECT_NE(error_message([&] { load_model(out.str(), eight); }).find("4 bits"), std::string::npos);
  fs::remove(out.path() / "model.safetensors");
  EXPECT_NE(error_message([&] { load_quantized(out.str()); }).find(out.str()), std::string::npos);
  fs::remove(out.path() / "config.json");
  EXPECT_NE(error_message([&] { load_quantized(out.str()); }).find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace marlin
