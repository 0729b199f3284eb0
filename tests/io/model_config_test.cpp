// config.json / generation_config.json parsing: the real configs of bench/configs (expected values
// read from the JSON itself), every spelling variant and family default, and the errors.
#include "marlin/model_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors_test_util.h"

namespace marlin {
namespace {

using nlohmann::json;

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// The first of several spellings present in `j`.
const json& any_of(const json& j, std::initializer_list<const char*> keys) {
  for (const char* key : keys)
    if (j.contains(key) && !j[key].is_null()) return j[key];
  ADD_FAILURE() << "none of the keys present";
  static const json null;
  return null;
}

TEST(ModelConfig, RealConfigsParseWithTheirValues) {
  const auto dir = std::filesystem::path(MARLIN_SOURCE_DIR) / "bench" / "configs";
  int checked = 0;
  for (const auto& file : std::filesystem::directory_iterator(dir)) {
    if (file.path().extension() != ".json") continue;
    SCOPED_TRACE(file.path().filename().string());
    const json j = read_json(file.path());
    const ModelConfig c = load_model_config(file.path().string());
    ++checked;
    EXPECT_EQ(model_type_name(c.model_type), j["model_type"].get<std::string>());
    EXPECT_EQ(c.architecture, j["architectures"][0].get<std::string>());
    EXPECT_EQ(c.vocab_size, j["vocab_size"].get<int64_t>());
    EXPECT_EQ(c.hidden_size, j["hidden_size"].get<int64_t>());
    EXPECT_EQ(c.intermediate_size, j["intermediate_size"].get<int64_t>());
    EXPECT_EQ(c.num_hidden_layers, j["num_hidden_layers"].get<int64_t>());
    EXPECT_EQ(c.num_attention_heads, j["num_attention_heads"].get<int64_t>());
    EXPECT_EQ(c.num_key_value_heads, j["num_key_value_heads"].get<int64_t>());
    EXPECT_EQ(c.rms_norm_eps, j["rms_norm_eps"].get<double>());
    EXPECT_EQ(c.rope_theta, j["rope_theta"].get<double>());
    EXPECT_EQ(c.max_position_embeddings, j["max_position_embeddings"].get<int64_t>());
    EXPECT_EQ(c.tie_word_embeddings, j["tie_word_embeddings"].get<bool>());
    EXPECT_EQ(c.attention_bias, j["attention_bias"].get<bool>());
    EXPECT_EQ(c.torch_dtype, DType::bf16);
    const json& eos = j["eos_token_id"];
    EXPECT_EQ(c.eos_token_ids, eos.is_array() ? eos.get<std::vector<int64_t>>()
                                              : std::vector<int64_t>{eos.get<int64_t>()});
    if (j.contains("bos_token_id")) {
      EXPECT_EQ(c.bos_token_id, j["bos_token_id"].get<int64_t>());
    }
    if (j.contains("pad_token_id")) {
      EXPECT_EQ(c.pad_token_id, j["pad_token_id"].get<int64_t>());
    }
    EXPECT_EQ(c.qk_norm, j["model_type"] == "qwen3" || j["model_type"] == "qwen3_moe");
    EXPECT_EQ(c.raw->at("vocab_size"), j["vocab_size"]);

    if (j.contains("kv_lora_rank")) {  // MLA
      ASSERT_TRUE(c.mla.has_value());
      EXPECT_EQ(c.mla->q_lora_rank, j["q_lora_rank"].get<int64_t>());
      EXPECT_EQ(c.mla->kv_lora_rank, j["kv_lora_rank"].get<int64_t>());
      EXPECT_EQ(c.mla->qk_rope_head_dim, j["qk_rope_head_dim"].get<int64_t>());
      EXPECT_EQ(c.mla->qk_nope_head_dim, j["qk_nope_head_dim"].get<int64_t>());
      EXPECT_EQ(c.mla->v_head_dim, j["v_head_dim"].get<int64_t>());
      EXPECT_EQ(c.head_dim,
                j["qk_rope_head_dim"].get<int64_t>() + j["qk_nope_head_dim"].get<int64_t>());
      EXPECT_EQ(c.rotary_dim, j["qk_rope_head_dim"].get<int64_t>());
      EXPECT_TRUE(c.rope_interleave);
    } else {
      EXPECT_FALSE(c.mla.has_value());
      const int64_t head_dim = j.contains("head_dim") ? j["head_dim"].get<int64_t>()
                                                      : j["hidden_size"].get<int64_t>() /
                                                            j["num_attention_heads"].get<int64_t>();
      EXPECT_EQ(c.head_dim, head_dim);
      EXPECT_EQ(c.rotary_dim, head_dim);
      EXPECT_FALSE(c.rope_interleave);
    }

    if (j.contains("num_experts_per_tok")) {  // MoE
      ASSERT_TRUE(c.moe.has_value());
      EXPECT_EQ(c.moe->num_experts, any_of(j, {"n_routed_experts", "num_experts"}).get<int64_t>());
      EXPECT_EQ(c.moe->num_experts_per_tok, j["num_experts_per_tok"].get<int64_t>());
      EXPECT_EQ(c.moe->moe_intermediate_size, j["moe_intermediate_size"].get<int64_t>());
      EXPECT_EQ(c.moe->norm_topk_prob, j["norm_topk_prob"].get<bool>());
      if (j.contains("routed_scaling_factor")) {
        EXPECT_EQ(c.moe->routed_scaling_factor, j["routed_scaling_factor"].get<double>());
      }
      if (j.contains("n_group")) {
        EXPECT_EQ(c.moe->n_group, j["n_group"].get<int64_t>());
      }
      if (j.contains("topk_group")) {
        EXPECT_EQ(c.moe->topk_group, j["topk_group"].get<int64_t>());
      }
      if (j.contains("n_shared_experts")) {
        EXPECT_EQ(c.moe->n_shared_experts, j["n_shared_experts"].get<int64_t>());
      }
      const int64_t first_dense = j.value("first_k_dense_replace", 0);
      for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
        EXPECT_EQ(c.is_moe_layer(layer), layer >= first_dense) << "layer " << layer;
    } else {
      EXPECT_FALSE(c.moe.has_value());
      EXPECT_FALSE(c.is_moe_layer(0));
    }

    const json& scaling = j["rope_scaling"];
    if (scaling.is_null()) {
      EXPECT_EQ(c.rope_scaling.type, RopeType::default_rope);
    } else {
      EXPECT_EQ(rope_type_name(c.rope_scaling.type), scaling["rope_type"].get<std::string>());
      EXPECT_EQ(c.rope_scaling.factor, scaling["factor"].get<double>());
      EXPECT_EQ(c.rope_scaling.low_freq_factor, scaling["low_freq_factor"].get<double>());
      EXPECT_EQ(c.rope_scaling.high_freq_factor, scaling["high_freq_factor"].get<double>());
      EXPECT_EQ(c.rope_scaling.original_max_position_embeddings,
                scaling["original_max_position_embeddings"].get<int64_t>());
    }
    for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
      EXPECT_FALSE(c.uses_sliding_window(layer));
  }
  EXPECT_EQ(checked, 5);
}

TEST(ModelConfig, GlmFlashRoutesLikeDeepSeekV3) {
  // Keys the file omits come from the Glm4MoeLite defaults: sigmoid scores, noaux_tc.
  const ModelConfig c =
      load_model_config(std::string(MARLIN_SOURCE_DIR) + "/bench/configs/glm-4.7-flash.json");
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->scoring_func, RouterScoring::sigmoid);
  EXPECT_EQ(c.moe->topk_method, TopkMethod::noaux_tc);
  EXPECT_EQ(c.v_head_dim, 256);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(46));
}

// A small llama config that the tests below vary.
json base_config(const std::string& type = "llama") {
  return {{"model_type", type},       {"vocab_size", 1000},     {"hidden_size", 256},
          {"intermediate_size", 512}, {"num_hidden_layers", 4}, {"num_attention_heads", 8},
          {"rms_norm_eps", 1e-5},     {"eos_token_id", 2}};
}

ModelConfig parse(const json& j) { return parse_model_config(j.dump(), "test/config.json"); }

TEST(ModelConfig, DefaultsForGqaAndHeadDim) {
  const ModelConfig c = parse(base_config());
  EXPECT_EQ(c.num_key_value_heads, 8);  // absent: = heads
  EXPECT_EQ(c.head_dim, 32);            // hidden / heads
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeType::default_rope);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_FALSE(c.torch_dtype.has_value());
  EXPECT_EQ(c.max_position_embeddings, 2048);
}

TEST(ModelConfig, RopeParametersSpellingOfTransformers5) {
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 123456.0}};
  j["rope_theta"] = 1.0;  // the block's value wins
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, RopeType::linear);
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(c.rope_theta, 123456.0);
  j["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 5e5}, {"partial_rotary_factor", 0.5}};
  const ModelConfig d = parse(j);
  EXPECT_EQ(d.rope_scaling.type, RopeType::default_rope);
  EXPECT_EQ(d.rotary_dim, 16);
}

TEST(ModelConfig, OldTypeKeyAndYarnForDeepSeekV2Lite) {
  json j = base_config("deepseek_v2");
  j.update({{"q_lora_rank", nullptr},
            {"kv_lora_rank", 64},
            {"qk_rope_head_dim", 16},
            {"qk_nope_head_dim", 32},
            {"v_head_dim", 32},
            {"n_routed_experts", 8},
            {"num_experts_per_tok", 2},
            {"moe_intermediate_size", 64},
            {"n_shared_experts", 2},
            {"first_k_dense_replace", 1},
            {"topk_method", "greedy"},
            {"rope_scaling",
             {{"type", "yarn"},
              {"factor", 40},
              {"original_max_position_embeddings", 4096},
              {"beta_fast", 32},
              {"beta_slow", 1},
              {"mscale", 0.707},
              {"mscale_all_dim", 0.707}}}});
  const ModelConfig c = parse(j);
  ASSERT_TRUE(c.mla);
  EXPECT_FALSE(c.mla->q_lora_rank.has_value());  // plain q_proj
  EXPECT_EQ(c.head_dim, 48);
  EXPECT_EQ(c.rope_scaling.type, RopeType::yarn);
  EXPECT_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope_scaling.mscale, 0.707);
  EXPECT_EQ(c.rope_scaling.mscale_all_dim, 0.707);
  EXPECT_FALSE(c.rope_scaling.attention_factor.has_value());
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->scoring_func, RouterScoring::softmax);
  EXPECT_FALSE(c.moe->norm_topk_prob);
  EXPECT_EQ(c.moe->n_shared_experts, 2);
  EXPECT_EQ(c.moe_layers, (std::vector<bool>{false, true, true, true}));
}

TEST(ModelConfig, DeepSeekV3DefaultsAndGroupedRouting) {
  json j = base_config("deepseek_v3");
  j.update({{"q_lora_rank", 96},
            {"kv_lora_rank", 64},
            {"qk_rope_head_dim", 16},
            {"qk_nope_head_dim", 32},
            {"v_head_dim", 32},
            {"n_routed_experts", 16},
            {"num_experts_per_tok", 4},
            {"moe_intermediate_size", 64},
            {"num_hidden_layers", 5}});
  const ModelConfig c = parse(j);
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->n_group, 8);
  EXPECT_EQ(c.moe->topk_group, 4);
  EXPECT_EQ(c.moe->routed_scaling_factor, 2.5);
  EXPECT_EQ(c.moe->topk_method, TopkMethod::noaux_tc);
  EXPECT_EQ(c.moe_layers, (std::vector<bool>{false, false, false, true, true}));
  j["mlp_layer_types"] = {"dense", "sparse", "dense", "sparse", "sparse"};
  EXPECT_EQ(parse(j).moe_layers, (std::vector<bool>{false, true, false, true, true}));
}

TEST(ModelConfig, MixtralAndQwen3MoeExperts) {
  json mixtral = base_config("mixtral");
  mixtral.update({{"num_local_experts", 8},
                  {"num_experts_per_tok", 2},
                  {"norm_topk_prob", false},
                  {"sliding_window", nullptr}});
  const ModelConfig m = parse(mixtral);
  ASSERT_TRUE(m.moe);
  EXPECT_EQ(m.moe->num_experts, 8);
  EXPECT_EQ(m.moe->moe_intermediate_size, 512);  // experts use intermediate_size
  EXPECT_TRUE(m.moe->norm_topk_prob);            // Mixtral always renormalizes
  EXPECT_FALSE(m.sliding_window.has_value());
  EXPECT_EQ(m.rope_theta, 1e6);

  json qwen = base_config("qwen3_moe");
  qwen.update({{"num_experts", 8},
               {"num_experts_per_tok", 2},
               {"moe_intermediate_size", 64},
               {"decoder_sparse_step", 2},
               {"mlp_only_layers", {3}},
               {"head_dim", 64}});
  const ModelConfig q = parse(qwen);
  EXPECT_EQ(q.moe_layers, (std::vector<bool>{false, true, false, false}));
  EXPECT_EQ(q.head_dim, 64);  // explicit, not hidden / heads
  EXPECT_TRUE(q.qk_norm);
}

TEST(ModelConfig, SlidingWindowAndBiasPerFamily) {
  json mistral = base_config("mistral");
  mistral["sliding_window"] = 4096;
  const ModelConfig m = parse(mistral);
  EXPECT_EQ(m.sliding_window, 4096);
  EXPECT_TRUE(m.uses_sliding_window(0) && m.uses_sliding_window(3));

  json qwen2 = base_config("qwen2");
  qwen2.update({{"sliding_window", 128}, {"use_sliding_window", false}, {"max_window_layers", 2}});
  const ModelConfig off = parse(qwen2);
  EXPECT_FALSE(off.sliding_window.has_value());
  EXPECT_TRUE(off.attention_bias);
  EXPECT_FALSE(off.attention_output_bias);
  qwen2["use_sliding_window"] = true;
  const ModelConfig on = parse(qwen2);
  EXPECT_EQ(on.sliding_window_layers, (std::vector<bool>{false, false, true, true}));

  json llama = base_config();
  llama.update({{"attention_bias", true},
                {"mlp_bias", true},
                {"eos_token_id", {5, 6}},
                {"torch_dtype", "float16"}});
  const ModelConfig l = parse(llama);
  EXPECT_TRUE(l.attention_bias && l.attention_output_bias && l.mlp_bias);
  EXPECT_EQ(l.eos_token_ids, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(l.torch_dtype, DType::f16);
  llama.erase("torch_dtype");
  llama["dtype"] = "float32";
  EXPECT_EQ(parse(llama).torch_dtype, DType::f32);
}

void expect_config_error(const json& j, const std::vector<std::string>& mentions) {
  try {
    parse(j);
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("test/config.json"), std::string::npos) << message;
    for (const auto& needle : mentions)
      EXPECT_NE(message.find(needle), std::string::npos)
          << "lacks \"" << needle << "\": " << message;
  }
}

TEST(ModelConfig, ErrorsNameTheFileAndTheKey) {
  json j = base_config("gpt2");
  expect_config_error(j,
                      {"model_type", "gpt2", "llama", "qwen3_moe", "deepseek_v3", "glm4_moe_lite"});
  j = base_config();
  j.erase("hidden_size");
  expect_config_error(j, {"\"hidden_size\"", "missing"});
  j = base_config();
  j["hidden_size"] = "256";
  expect_config_error(j, {"\"hidden_size\"", "integer"});
  j = base_config();
  j["num_hidden_layers"] = 2.5;
  expect_config_error(j, {"\"num_hidden_layers\"", "integer"});
  j = base_config();
  j["num_key_value_heads"] = 3;
  expect_config_error(j, {"\"num_key_value_heads\""});
  j = base_config();
  j["tie_word_embeddings"] = "yes";
  expect_config_error(j, {"\"tie_word_embeddings\"", "true or false"});
  j = base_config();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_config_error(j, {"rope_scaling.rope_type", "dynamic", "llama3", "yarn"});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  expect_config_error(j, {"rope_scaling.low_freq_factor", "missing"});
  j["rope_scaling"] = {{"factor", 2.0}};
  expect_config_error(j, {"rope_scaling", "rope_type"});
  j = base_config();
  j["torch_dtype"] = "int8";
  expect_config_error(j, {"\"torch_dtype\"", "int8"});
  j = base_config();
  j["eos_token_id"] = {1, "two"};
  expect_config_error(j, {"\"eos_token_id\""});
  j = base_config("qwen3_moe");
  expect_config_error(j, {"\"num_experts\"", "missing"});
  j.update({{"num_experts", 4}, {"num_experts_per_tok", 8}, {"moe_intermediate_size", 64}});
  expect_config_error(j, {"\"num_experts_per_tok\"", "exceeds"});
  j = base_config("deepseek_v3");
  j.update(
      {{"q_lora_rank", 96}, {"kv_lora_rank", 64}, {"qk_rope_head_dim", 16}, {"v_head_dim", 32}});
  expect_config_error(j, {"\"qk_nope_head_dim\""});
  try {
    parse_model_config("{\"model_type\": ", "broken/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken/config.json"), std::string::npos);
  }
  EXPECT_THROW(parse_model_config("[1, 2]"), Error);
  EXPECT_THROW(load_model_config("/nonexistent/marlin/config.json"), Error);
}

TEST(GenerationConfig, ParsesDefaultsAndLoadsFromDirectories) {
  const GenerationDefaults g = parse_generation_config(
      R"({"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05,
          "do_sample": true, "max_new_tokens": 256, "max_length": 4096,
          "eos_token_id": [151645, 151643], "bos_token_id": 151643, "pad_token_id": 151643})");
  EXPECT_EQ(g.temperature, 0.6);
  EXPECT_EQ(g.top_p, 0.95);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_EQ(g.repetition_penalty, 1.05);
  EXPECT_EQ(g.do_sample, true);
  EXPECT_EQ(g.max_new_tokens, 256);
  EXPECT_EQ(g.max_length, 4096);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  EXPECT_EQ(g.bos_token_id, 151643);

  testing::ScratchDir dir("generation_config");
  EXPECT_FALSE(load_generation_config(dir.path()).temperature.has_value());  // file is optional
  std::ofstream(dir.file("generation_config.json")) << R"({"eos_token_id": 7, "temperature": 0.0})";
  std::ofstream(dir.file("config.json")) << base_config().dump();
  const GenerationDefaults loaded = load_generation_config(dir.path());
  EXPECT_EQ(loaded.eos_token_ids, std::vector<int64_t>{7});
  EXPECT_EQ(loaded.temperature, 0.0);
  EXPECT_FALSE(loaded.top_k.has_value());
  EXPECT_EQ(load_model_config(dir.path()).hidden_size, 256);

  try {
    parse_generation_config(R"({"top_p": "high"})", "gen/generation_config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("gen/generation_config.json"), std::string::npos) << message;
    EXPECT_NE(message.find("\"top_p\""), std::string::npos) << message;
  }
  EXPECT_THROW(parse_generation_config(R"({"top_p": 1.5})"), Error);
  EXPECT_THROW(parse_generation_config(R"({"do_sample": 1})"), Error);
}

}  // namespace
}  // namespace marlin
