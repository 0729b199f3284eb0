// `marlin quantize` end to end: --skip keeps the named linear layers 16-bit, records them in the
// saved quantization_config.modules_not_converted, and the saved directory runs bit for bit as
// load_model with the same options.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

std::string run_cli(const std::string& args, int* status) {
  std::string output;
  FILE* pipe = popen((std::string(MARLIN_CLI_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (!pipe) return output;
  std::array<char, 4096> buffer;
  size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), got);
  *status = pclose(pipe);
  return output;
}

TEST(QuantizeCli, SkipKeepsLayersSixteenBitAndRecordsThem) {
  const std::string model = std::string(MARLIN_TEST_FIXTURES) + "/models/qwen2";
  const fs::path out = fs::temp_directory_path() / "marlin_quantize_cli_skip";
  fs::remove_all(out);
  int status = -1;
  const std::string text = run_cli("quantize -m " + model + " -o " + out.string() +
                                       " --bits 4 --group-size 32 --skip mlp.down_proj --skip layers.1.self_attn.k_proj",
                                   &status);
  ASSERT_EQ(status, 0) << text;
  std::ifstream in(out / "config.json");
  const nlohmann::json q = nlohmann::json::parse(in)["quantization_config"];
  std::vector<std::string> names = q["modules_not_converted"].get<std::vector<std::string>>();
  std::sort(names.begin(), names.end());
  const std::vector<std::string> want = {"lm_head", "model.embed_tokens", "model.layers.0.mlp.down_proj",
                                         "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.k_proj"};
  EXPECT_EQ(names, want);
  const SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(out.string());
  EXPECT_TRUE(saved.has("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_TRUE(saved.has("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_TRUE(saved.has("model.layers.0.self_attn.k_proj.weight_packed"));

  ModelLoadOptions options;
  options.bits = 4;
  options.group_size = 32;
  options.modules_not_converted = {"mlp.down_proj", "layers.1.self_attn.k_proj"};
  const Tensor ids = load_npy(model + "/prompt_ids.npy");
  EXPECT_EQ(load_quantized(out.string())->forward(ids).to_float_vector(),
            load_model(model, options)->forward(ids).to_float_vector());
  fs::remove_all(out);
}

}  // namespace
}  // namespace marlin
