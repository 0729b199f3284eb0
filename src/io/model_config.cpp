// config.json -> ModelConfig. Defaults follow each model type's Transformers config class, so a
// config.json that Transformers loads means the same thing here.
#include "marlin/model_config.h"

#include <array>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/json_fields.h"
#include "io/model_config_parts.h"
#include "marlin/error.h"

namespace marlin {

namespace {

using io::JsonFields;
constexpr std::string_view kOp = "model_config";

// What differs between the Transformers config classes of the supported families.
struct TypeDefaults {
  ModelType type;
  std::string_view name;
  double rms_norm_eps;
  double rope_theta;
  int64_t max_position_embeddings;
};
constexpr std::array<TypeDefaults, 9> kTypes{{
    {ModelType::llama, "llama", 1e-6, 10000.0, 2048},
    {ModelType::mistral, "mistral", 1e-6, 10000.0, 4096 * 32},
    {ModelType::qwen2, "qwen2", 1e-6, 10000.0, 32768},
    {ModelType::qwen3, "qwen3", 1e-6, 10000.0, 32768},
    {ModelType::qwen3_moe, "qwen3_moe", 1e-6, 10000.0, 32768},
    {ModelType::mixtral, "mixtral", 1e-5, 1e6, 4096 * 32},
    {ModelType::deepseek_v2, "deepseek_v2", 1e-6, 10000.0, 2048},
    {ModelType::deepseek_v3, "deepseek_v3", 1e-6, 10000.0, 4096},
    {ModelType::glm4_moe_lite, "glm4_moe_lite", 1e-5, 10000.0, 202752},
}};

const TypeDefaults& defaults_of(ModelType type) {
  for (const auto& entry : kTypes)
    if (entry.type == type) return entry;
  fail(kOp, "unknown model type enum value");
}

bool is_mla(ModelType type) {
  return type == ModelType::deepseek_v2 || type == ModelType::deepseek_v3 ||
         type == ModelType::glm4_moe_lite;
}

std::optional<DType> parse_torch_dtype(const JsonFields& f) {
  const char* key = f.first_present({"torch_dtype", "dtype"});
  if (!key) return std::nullopt;
  const std::string name = f.required_string(key);
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16") return DType::f16;
  if (name == "float32") return DType::f32;
  f.fail_key(key, "unsupported dtype \"" + name + "\" (supported: bfloat16, float16, float32)");
}

void parse_attention_shape(const JsonFields& f, ModelConfig& c) {
  c.num_attention_heads = f.required_positive("num_attention_heads");
  c.num_key_value_heads = f.int_or("num_key_value_heads", c.num_attention_heads);
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail_key("num_key_value_heads", "must be positive and divide num_attention_heads=" +
                                          std::to_string(c.num_attention_heads) + ", got " +
                                          std::to_string(c.num_key_value_heads));
  c.partial_rotary_factor = f.number_or("partial_rotary_factor", 1.0);
  if (f.has("rope_parameters") && f.at("rope_parameters").is_object()) {  // Transformers 5
    const JsonFields rope(f.at("rope_parameters"), f.source(), kOp, "rope_parameters.");
    c.partial_rotary_factor = rope.number_or("partial_rotary_factor", c.partial_rotary_factor);
  }
  if (c.mla) {
    c.head_dim = c.mla->qk_head_dim();
    c.v_head_dim = c.mla->v_head_dim;
    c.rotary_dim = c.mla->qk_rope_head_dim;
    return;
  }
  if (f.has("head_dim")) {
    c.head_dim = f.required_positive("head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      f.fail_key("num_attention_heads", "hidden_size=" + std::to_string(c.hidden_size) +
                                            " is not a multiple of it and head_dim is not given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.v_head_dim = c.head_dim;
  const double rotary = static_cast<double>(c.head_dim) * c.partial_rotary_factor;
  c.rotary_dim = static_cast<int64_t>(rotary);
  if (!(c.partial_rotary_factor > 0.0 && c.partial_rotary_factor <= 1.0) ||
      static_cast<double>(c.rotary_dim) != rotary || c.rotary_dim % 2 != 0)
    f.fail_key("partial_rotary_factor",
               "must give an even number of rotary dims of head_dim=" + std::to_string(c.head_dim));
}

void parse_biases_and_norms(const JsonFields& f, ModelConfig& c) {
  switch (c.model_type) {
    case ModelType::qwen2:  // bias on q/k/v always, never on o_proj
      c.attention_bias = true;
      c.attention_output_bias = false;
      break;
    case ModelType::mistral:
    case ModelType::mixtral: c.attention_bias = c.attention_output_bias = false; break;
    default: c.attention_bias = c.attention_output_bias = f.bool_or("attention_bias", false);
  }
  c.mlp_bias = c.model_type == ModelType::llama && f.bool_or("mlp_bias", false);
  c.qk_norm = c.model_type == ModelType::qwen3 || c.model_type == ModelType::qwen3_moe;
}

void parse_sliding_window(const JsonFields& f, ModelConfig& c) {
  const size_t layers = static_cast<size_t>(c.num_hidden_layers);
  c.sliding_window_layers.assign(layers, false);
  switch (c.model_type) {
    case ModelType::mistral:
    case ModelType::mixtral:
      c.sliding_window = f.optional_int("sliding_window");
      if (c.sliding_window) c.sliding_window_layers.assign(layers, true);
      break;
    case ModelType::qwen2:
    case ModelType::qwen3:
    case ModelType::qwen3_moe:
      // Qwen: the window applies only with use_sliding_window, from max_window_layers on.
      if (f.bool_or("use_sliding_window", false)) {
        c.sliding_window = f.optional_int("sliding_window");
        const int64_t first = f.int_or("max_window_layers", 28);
        for (int64_t i = std::max<int64_t>(first, 0); i < c.num_hidden_layers && c.sliding_window;
             ++i)
          c.sliding_window_layers[static_cast<size_t>(i)] = true;
      }
      break;
    default: break;
  }
  if (f.has("layer_types")) {  // Transformers 5 spells the per-layer choice out
    const auto types = f.string_list("layer_types");
    if (types.size() != layers)
      f.fail_key("layer_types", "has " + std::to_string(types.size()) + " entries for " +
                                    std::to_string(layers) + " layers");
    for (size_t i = 0; i < layers; ++i) {
      if (types[i] != "full_attention" && types[i] != "sliding_attention")
        f.fail_key("layer_types", "unknown layer type \"" + types[i] +
                                      "\" (expected full_attention or sliding_attention)");
      c.sliding_window_layers[i] = types[i] == "sliding_attention";
    }
    if (!c.sliding_window && types != std::vector<std::string>(layers, "full_attention"))
      c.sliding_window = f.optional_int("sliding_window");
  }
  if (c.sliding_window && *c.sliding_window <= 0)
    f.fail_key("sliding_window", "must be positive, got " + std::to_string(*c.sliding_window));
  for (bool sliding : c.sliding_window_layers)
    if (sliding && !c.sliding_window) f.fail_key("sliding_window", "is needed by layer_types");
}

}  // namespace

std::string_view model_type_name(ModelType type) { return defaults_of(type).name; }

std::string supported_model_types() {
  std::string out;
  for (const auto& entry : kTypes) out.append(out.empty() ? "" : ", ").append(entry.name);
  return out;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  return layer >= 0 && layer < static_cast<int64_t>(moe_layers.size()) &&
         moe_layers[static_cast<size_t>(layer)];
}

bool ModelConfig::uses_sliding_window(int64_t layer) const {
  return layer >= 0 && layer < static_cast<int64_t>(sliding_window_layers.size()) &&
         sliding_window_layers[static_cast<size_t>(layer)];
}

ModelConfig parse_model_config(std::string_view json_text, const std::string& source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail(kOp, source, ": not valid JSON: ", e.what());
  }
  const JsonFields f(json, source, kOp);

  ModelConfig c;
  c.source = source;
  const std::string type_name = f.required_string("model_type");
  const TypeDefaults* defaults = nullptr;
  for (const auto& entry : kTypes)
    if (entry.name == type_name) defaults = &entry;
  if (!defaults)
    f.fail_key("model_type", "unsupported model type \"" + type_name +
                                 "\" (supported: " + supported_model_types() + ")");
  c.model_type = defaults->type;
  const auto architectures = f.string_list("architectures");
  if (!architectures.empty()) c.architecture = architectures[0];

  c.vocab_size = f.required_positive("vocab_size");
  c.hidden_size = f.required_positive("hidden_size");
  c.intermediate_size = f.required_positive("intermediate_size");
  c.num_hidden_layers = f.required_positive("num_hidden_layers");
  // Per-layer tables are allocated from this; no real model comes near the bound.
  if (c.num_hidden_layers > 100000) f.fail_key("num_hidden_layers", "is implausibly large");
  c.max_position_embeddings =
      f.int_or("max_position_embeddings", defaults->max_position_embeddings);
  if (c.max_position_embeddings <= 0) f.fail_key("max_position_embeddings", "must be positive");
  c.rms_norm_eps = f.number_or("rms_norm_eps", defaults->rms_norm_eps);
  if (!(c.rms_norm_eps > 0.0)) f.fail_key("rms_norm_eps", "must be positive");
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  c.hidden_act = f.optional_string("hidden_act").value_or("silu");
  c.torch_dtype = parse_torch_dtype(f);

  if (is_mla(c.model_type)) c.mla = io::parse_mla(f);
  parse_attention_shape(f, c);
  parse_biases_and_norms(f, c);
  io::parse_rope(f, defaults->rope_theta, c);
  // DeepSeek and GLM's MLA rotate interleaved pairs (Transformers' rope_interleave, default on).
  c.rope_interleave = f.bool_or("rope_interleave", c.mla.has_value());
  parse_sliding_window(f, c);
  io::parse_moe(f, c);

  c.eos_token_ids = f.int_or_int_list("eos_token_id");
  c.bos_token_id = f.optional_int("bos_token_id");
  c.pad_token_id = f.optional_int("pad_token_id");
  c.raw = std::make_shared<const nlohmann::json>(std::move(json));
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::error_code ec;
  const std::string file = std::filesystem::is_directory(path, ec)
                               ? (std::filesystem::path(path) / "config.json").string()
                               : path;
  return parse_model_config(io::read_text_file(file, kOp), file);
}

}  // namespace marlin
