// `marlin bench generate` end to end on the CPU with a tiny synthetic model: the JSON holds every
// figure, the figures agree with each other and with the step accounting of the same model,
// and bad arguments are clear errors; the GLM-4.7-Flash config's layout (MLA, MoE with a shared
// expert, a dense first layer) shrunk to a tiny model counts its decode bytes and memory.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "marlin/model.h"
#include "models/step_cost.h"

namespace marlin {
namespace {

std::string run_cli(const std::string& args, int* status) {
  std::string output;
  FILE* pipe = popen((std::string(MARLIN_CLI_PATH) + " " + args).c_str(), "r");
  if (!pipe) return output;
  std::array<char, 4096> buffer;
  size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), got);
  *status = pclose(pipe);
  return output;
}

std::string config_path() { return std::string(MARLIN_TEST_FIXTURES) + "/models/llama_gqa/config.json"; }

TEST(BenchGenerate, JsonHoldsConsistentFigures) {
  int status = -1;
  const std::string out = run_cli("bench generate --config " + config_path() +
                                      " --synthetic --device cpu --bits 4 --group-size 32 --dtype bf16"
                                      " --prompt-len 8 --gen-len 5 --batch 2 --warmup 0"
                                      " --bandwidth-mib 16 --json",
                                  &status);
  ASSERT_EQ(status, 0) << out;
  const auto r = nlohmann::json::parse(out);
  for (const char* key :
       {"device", "device_name", "bits", "group_size", "dtype", "batch", "prompt_len", "gen_len",
        "load_s", "prefill_ms", "prefill_tokens_per_s", "decode_ms", "decode_tokens_per_s",
        "time_per_output_token_ms", "device_read_gbps", "bytes_per_step", "kv_positions_mean",
        "achieved_gbps", "roofline_fraction", "roofline_tokens_per_s", "gemm_fp16_tflops",
        "prefill_flops", "prefill_tflops", "prefill_flop_fraction"})
    EXPECT_TRUE(r.contains(key)) << key << " missing from " << out;
  EXPECT_EQ(r["device"], "cpu");
  EXPECT_EQ(r["bits"], 4);
  EXPECT_EQ(r["dtype"], "bf16");
  // 4 decode steps after the prefill's token; 2 rows each.
  const double decode_s = r["decode_ms"].get<double>() * 1e-3;
  EXPECT_NEAR(r["decode_tokens_per_s"].get<double>(), 2 * 4 / decode_s, 1e-6 * 8 / decode_s);
  EXPECT_NEAR(r["time_per_output_token_ms"].get<double>(), r["decode_ms"].get<double>() / 4, 1e-9);
  EXPECT_NEAR(r["prefill_tokens_per_s"].get<double>(), 16 / (r["prefill_ms"].get<double>() * 1e-3),
              1e-6 * r["prefill_tokens_per_s"].get<double>());
  // Steps feed positions 8..11 and read 9..12 cached positions: 10.5 on average.
  EXPECT_DOUBLE_EQ(r["kv_positions_mean"].get<double>(), 10.5);

  // The bytes are those of the same model counted in-process.
  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(load_model_config(config_path()), o);
  const auto bytes = decode_step_bytes(*model, 2, 10.5);
  ASSERT_TRUE(bytes.has_value());
  const auto& b = r["bytes_per_step"];
  EXPECT_EQ(b["total"].get<int64_t>(), bytes->total());
  EXPECT_EQ(b["quantized_weights"].get<int64_t>(), bytes->quantized_weights);
  EXPECT_EQ(b["kv_cache"].get<int64_t>(), bytes->kv_cache);
  const double gbps = static_cast<double>(bytes->total()) / (decode_s / 4) / 1e9;
  EXPECT_NEAR(r["achieved_gbps"].get<double>(), gbps, 1e-6 * gbps);
  EXPECT_NEAR(r["roofline_fraction"].get<double>(), gbps / r["device_read_gbps"].get<double>(), 1e-6);
  EXPECT_GT(r["device_read_gbps"].get<double>(), 0.1);
  EXPECT_GT(r["gemm_fp16_tflops"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(r["prefill_flops"].get<double>(), *prefill_flops(*model, 2, 8));
}

TEST(BenchGenerate, TextOutputAndErrors) {
  int status = -1;
  const std::string text = run_cli("bench generate --config " + config_path() +
                                       " --synthetic --device cpu --prompt-len 4 --gen-len 2"
                                       " --group-size 32 --warmup 0 --bandwidth-mib 16 2>&1",
                                   &status);
  ASSERT_EQ(status, 0) << text;
  for (const char* what : {"prefill", "decode", "tokens/s", "bytes per decode step", "GB/s", "roofline"})
    EXPECT_NE(text.find(what), std::string::npos) << what << " missing from " << text;

  const std::string both = run_cli("bench generate --config " + config_path() + " 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(both.find("--synthetic"), std::string::npos) << both;
  const std::string bits = run_cli("bench generate --config " + config_path() +
                                       " --synthetic --device cpu --bits 3 --bandwidth-mib 16 2>&1",
                                   &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(bits.find("bits"), std::string::npos) << bits;
}

// bench/configs/glm-4.7-flash.json with every size shrunk (the GPU runs the real shapes): the
// same keys, so the same MLA and MoE layout, routing and dense first layer.
std::string tiny_glm_config() {
  std::ifstream in(std::string(MARLIN_SOURCE_DIR) + "/bench/configs/glm-4.7-flash.json");
  nlohmann::json c = nlohmann::json::parse(in);
  const nlohmann::json tiny = {{"hidden_size", 64},       {"intermediate_size", 96},
                               {"kv_lora_rank", 32},      {"q_lora_rank", 32},
                               {"qk_nope_head_dim", 16},  {"qk_rope_head_dim", 16},
                               {"v_head_dim", 16},        {"num_attention_heads", 4},
                               {"num_key_value_heads", 4}, {"moe_intermediate_size", 32},
                               {"n_routed_experts", 8},   {"num_hidden_layers", 3},
                               {"vocab_size", 512},       {"max_position_embeddings", 4096}};
  for (const auto& [k, v] : tiny.items()) {
    EXPECT_TRUE(c.contains(k)) << k;
    c[k] = v;
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / "marlin_bench_generate_tiny_glm";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << c.dump(2);
  return (dir / "config.json").string();
}

TEST(BenchGenerate, MlaMoeConfigCountsChosenExpertsAndMemory) {
  const std::string config = tiny_glm_config();
  int status = -1;
  const std::string out = run_cli("bench generate --config " + config +
                                      " --synthetic --device cpu --bits 4 --group-size 32 --dtype bf16"
                                      " --prompt-len 6 --gen-len 4 --warmup 0 --cache-len 64"
                                      " --bandwidth-mib 16 --json",
                                  &status);
  ASSERT_EQ(status, 0) << out;
  const auto r = nlohmann::json::parse(out);
  EXPECT_EQ(r["model_type"], "glm4_moe_lite");
  ASSERT_TRUE(r.contains("roofline_fraction")) << out;
  EXPECT_GT(r["roofline_fraction"].get<double>(), 0.0);

  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(load_model_config(config), o);
  // Steps feed positions 6..8 and read 7..9 cached positions: 8 on average.
  const auto bytes = decode_step_bytes(*model, 1, 8.0);
  ASSERT_TRUE(bytes.has_value());
  const auto& b = r["bytes_per_step"];
  EXPECT_EQ(b["total"].get<int64_t>(), bytes->total());
  EXPECT_EQ(b["routed_experts"].get<int64_t>(), bytes->routed_experts);
  EXPECT_GT(bytes->routed_experts, 0);
  // The memory floor: every weight, and the --cache-len cache (3 layers x 64 x 48 values, bf16).
  EXPECT_EQ(r["weight_bytes"].get<int64_t>(), *resident_weight_bytes(*model));
  EXPECT_EQ(r["kv_cache_positions"].get<int64_t>(), 64);
  EXPECT_EQ(r["kv_cache_bytes"].get<int64_t>(), 3 * 64 * 48 * 2);
  EXPECT_GT(r["weight_bytes"].get<int64_t>(), b["weights"].get<int64_t>());  // all 8 experts

  const std::string text = run_cli("bench generate --config " + config +
                                       " --synthetic --device cpu --group-size 32 --prompt-len 4"
                                       " --gen-len 2 --warmup 0 --bandwidth-mib 16 2>&1",
                                   &status);
  ASSERT_EQ(status, 0) << text;
  for (const char* what : {"% of the roofline", "chosen routed experts", "memory: weights", "KV cache"})
    EXPECT_NE(text.find(what), std::string::npos) << what << " missing from " << text;
  const std::string short_cache = run_cli("bench generate --config " + config +
                                              " --synthetic --device cpu --prompt-len 8 --gen-len 4"
                                              " --cache-len 10 --bandwidth-mib 16 2>&1",
                                          &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(short_cache.find("--cache-len"), std::string::npos) << short_cache;
}

}  // namespace
}  // namespace marlin
