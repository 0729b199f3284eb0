// RoPE, MLA and MoE blocks of config.json (see model_config_parts.h).
#include "io/model_config_parts.h"

#include <cmath>
#include <nlohmann/json.hpp>

namespace marlin {

std::string_view rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::default_rope: return "default";
    case RopeType::linear: return "linear";
    case RopeType::llama3: return "llama3";
    case RopeType::yarn: return "yarn";
  }
  return "?";
}

namespace io {

namespace {

double positive_number(const JsonFields& f, std::string_view key) {
  const double v = f.required_number(key);
  if (!(v > 0.0)) f.fail_key(key, "must be positive, got " + f.at(key).dump());
  return v;
}

}  // namespace

void parse_rope(const JsonFields& f, double default_theta, ModelConfig& c) {
  c.rope_theta = f.number_or("rope_theta", default_theta);
  // Transformers 5 writes rope_parameters (which also holds rope_theta); older files
  // rope_scaling, null when there is no scaling.
  const char* block_key = f.first_present({"rope_parameters", "rope_scaling"});
  if (block_key) {
    const JsonFields r(f.at(block_key), f.source(), f.op(), std::string(block_key) + ".");
    c.rope_theta = r.number_or("rope_theta", c.rope_theta);
    const char* type_key = r.first_present({"rope_type", "type"});
    const std::string type = type_key ? r.required_string(type_key) : "";
    if (!type_key && std::string_view(block_key) == "rope_scaling")
      f.fail_key(block_key, "needs \"rope_type\" (or \"type\")");
    RopeScaling& s = c.rope_scaling;
    if (type.empty() || type == "default") {
      s.type = RopeType::default_rope;
    } else if (type == "linear") {
      s.type = RopeType::linear;
      s.factor = positive_number(r, "factor");
    } else if (type == "llama3") {
      s.type = RopeType::llama3;
      s.factor = positive_number(r, "factor");
      s.low_freq_factor = positive_number(r, "low_freq_factor");
      s.high_freq_factor = positive_number(r, "high_freq_factor");
      s.original_max_position_embeddings = r.required_positive("original_max_position_embeddings");
      // llama3 smoothing divides by (high - low).
      if (!(s.high_freq_factor > s.low_freq_factor))
        r.fail_key("high_freq_factor", "must exceed low_freq_factor");
    } else if (type == "yarn") {
      s.type = RopeType::yarn;
      s.factor = positive_number(r, "factor");
      s.original_max_position_embeddings = r.optional_int("original_max_position_embeddings");
      if (s.original_max_position_embeddings && *s.original_max_position_embeddings <= 0)
        r.fail_key("original_max_position_embeddings", "must be positive");
      s.beta_fast = r.number_or("beta_fast", 32.0);
      s.beta_slow = r.number_or("beta_slow", 1.0);
      s.mscale = r.optional_number("mscale");
      s.mscale_all_dim = r.optional_number("mscale_all_dim");
      s.attention_factor = r.optional_number("attention_factor");
    } else {
      r.fail_key(type_key, "unsupported rope type \"" + type +
                               "\" (supported: default, linear, llama3, yarn)");
    }
  }
  if (!(c.rope_theta > 0.0)) f.fail_key("rope_theta", "must be positive");
}

MlaConfig parse_mla(const JsonFields& f) {
  MlaConfig m;
  m.q_lora_rank = f.optional_int("q_lora_rank");
  if (m.q_lora_rank && *m.q_lora_rank <= 0) f.fail_key("q_lora_rank", "must be positive or null");
  m.kv_lora_rank = f.required_positive("kv_lora_rank");
  m.qk_rope_head_dim = f.required_positive("qk_rope_head_dim");
  m.qk_nope_head_dim = f.required_positive("qk_nope_head_dim");
  m.v_head_dim = f.required_positive("v_head_dim");
  if (m.qk_rope_head_dim % 2 != 0) f.fail_key("qk_rope_head_dim", "must be even");
  return m;
}

namespace {

// Routing defaults of each MoE family's Transformers config class.
MoeConfig moe_defaults(ModelType type) {
  MoeConfig m;
  switch (type) {
    case ModelType::mixtral:
      m.norm_topk_prob = true;  // Mixtral always renormalizes its top-k
      break;
    case ModelType::deepseek_v3:
      m = {.n_shared_experts = 1,
           .norm_topk_prob = true,
           .routed_scaling_factor = 2.5,
           .n_group = 8,
           .topk_group = 4,
           .topk_method = TopkMethod::noaux_tc,
           .scoring_func = RouterScoring::sigmoid};
      break;
    case ModelType::glm4_moe_lite:
      m = {.n_shared_experts = 1,
           .norm_topk_prob = true,
           .routed_scaling_factor = 1.8,
           .topk_method = TopkMethod::noaux_tc,
           .scoring_func = RouterScoring::sigmoid};
      break;
    default:  // qwen3_moe, deepseek_v2
      break;
  }
  return m;
}

void parse_routing(const JsonFields& f, ModelType type, MoeConfig& m) {
  if (type != ModelType::mixtral) m.norm_topk_prob = f.bool_or("norm_topk_prob", m.norm_topk_prob);
  m.n_shared_experts = f.int_or("n_shared_experts", m.n_shared_experts);
  m.routed_scaling_factor = f.number_or("routed_scaling_factor", m.routed_scaling_factor);
  m.n_group = f.int_or("n_group", m.n_group);
  m.topk_group = f.int_or("topk_group", m.topk_group);
  if (const auto method = f.optional_string("topk_method")) {
    if (*method == "greedy")
      m.topk_method = TopkMethod::greedy;
    else if (*method == "group_limited_greedy")
      m.topk_method = TopkMethod::group_limited_greedy;
    else if (*method == "noaux_tc")
      m.topk_method = TopkMethod::noaux_tc;
    else
      f.fail_key("topk_method", "unsupported \"" + *method +
                                    "\" (supported: greedy, group_limited_greedy, noaux_tc)");
  }
  if (const auto scoring = f.optional_string("scoring_func")) {
    if (*scoring == "softmax")
      m.scoring_func = RouterScoring::softmax;
    else if (*scoring == "sigmoid")
      m.scoring_func = RouterScoring::sigmoid;
    else
      f.fail_key("scoring_func", "unsupported \"" + *scoring + "\" (supported: softmax, sigmoid)");
  }

  const std::string experts = std::to_string(m.num_experts);
  if (m.num_experts_per_tok > m.num_experts)
    f.fail_key("num_experts_per_tok", "exceeds the " + experts + " experts");
  if (m.n_shared_experts < 0) f.fail_key("n_shared_experts", "must not be negative");
  if (!(m.routed_scaling_factor > 0.0)) f.fail_key("routed_scaling_factor", "must be positive");
  if (m.n_group <= 0 || m.num_experts % m.n_group != 0)
    f.fail_key("n_group", "must be positive and divide the " + experts + " experts");
  if (m.topk_group <= 0 || m.topk_group > m.n_group)
    f.fail_key("topk_group", "must be in 1..n_group=" + std::to_string(m.n_group));
  if (m.num_experts_per_tok > m.topk_group * (m.num_experts / m.n_group))
    f.fail_key("num_experts_per_tok", "exceeds the experts of topk_group groups");
}

void parse_moe_layers(const JsonFields& f, ModelType type, ModelConfig& c) {
  const int64_t layers = c.num_hidden_layers;
  if (f.has("mlp_layer_types")) {  // Transformers 5 spells the per-layer choice out
    const auto kinds = f.string_list("mlp_layer_types");
    if (static_cast<int64_t>(kinds.size()) != layers)
      f.fail_key("mlp_layer_types", "has " + std::to_string(kinds.size()) + " entries for " +
                                        std::to_string(layers) + " layers");
    for (int64_t i = 0; i < layers; ++i) {
      const auto& kind = kinds[static_cast<size_t>(i)];
      if (kind != "dense" && kind != "sparse")
        f.fail_key("mlp_layer_types", "unknown entry \"" + kind + "\" (expected dense or sparse)");
      c.moe_layers[static_cast<size_t>(i)] = kind == "sparse";
    }
    return;
  }
  if (type == ModelType::mixtral) {
    c.moe_layers.assign(static_cast<size_t>(layers), true);
  } else if (type == ModelType::qwen3_moe) {
    const int64_t step = f.int_or("decoder_sparse_step", 1);
    if (step <= 0) f.fail_key("decoder_sparse_step", "must be positive");
    c.moe_layers.assign(static_cast<size_t>(layers), false);
    for (int64_t i = 0; i < layers; ++i) c.moe_layers[static_cast<size_t>(i)] = (i + 1) % step == 0;
    for (int64_t dense : f.int_list("mlp_only_layers")) {
      if (dense < 0 || dense >= layers)
        f.fail_key("mlp_only_layers", "layer " + std::to_string(dense) + " is out of range");
      c.moe_layers[static_cast<size_t>(dense)] = false;
    }
  } else {  // DeepSeek and GLM: dense below first_k_dense_replace, then every moe_layer_freq-th
    const int64_t first = f.int_or("first_k_dense_replace", type == ModelType::deepseek_v3     ? 3
                                                            : type == ModelType::glm4_moe_lite ? 1
                                                                                               : 0);
    const int64_t freq = f.int_or("moe_layer_freq", 1);
    if (first < 0) f.fail_key("first_k_dense_replace", "must not be negative");
    if (freq <= 0) f.fail_key("moe_layer_freq", "must be positive");
    for (int64_t i = 0; i < layers; ++i)
      c.moe_layers[static_cast<size_t>(i)] = i >= first && i % freq == 0;
  }
}

}  // namespace

void parse_moe(const JsonFields& f, ModelConfig& c) {
  c.moe_layers.assign(static_cast<size_t>(c.num_hidden_layers), false);
  const ModelType type = c.model_type;
  const bool moe_family = type == ModelType::qwen3_moe || type == ModelType::mixtral ||
                          type == ModelType::deepseek_v2 || type == ModelType::deepseek_v3 ||
                          type == ModelType::glm4_moe_lite;
  if (!moe_family) return;
  const char* experts_key =
      f.first_present({"n_routed_experts", "num_experts", "num_local_experts"});
  if (!experts_key) {
    // DeepSeek configs may leave n_routed_experts null: a dense model.
    if (type == ModelType::qwen3_moe) f.at("num_experts");
    if (type == ModelType::mixtral) f.at("num_local_experts");
    if (type == ModelType::deepseek_v3 || type == ModelType::glm4_moe_lite)
      f.at("n_routed_experts");
    return;
  }
  MoeConfig m = moe_defaults(type);
  m.num_experts = f.required_int(experts_key);
  if (m.num_experts < 0) f.fail_key(experts_key, "must not be negative");
  if (m.num_experts == 0) return;  // Qwen3-MoE with num_experts 0 is dense
  m.num_experts_per_tok = f.required_positive("num_experts_per_tok");
  m.moe_intermediate_size = type == ModelType::mixtral
                                ? c.intermediate_size
                                : f.required_positive("moe_intermediate_size");
  parse_routing(f, type, m);
  c.moe = m;
  parse_moe_layers(f, type, c);
}

}  // namespace io
}  // namespace marlin
