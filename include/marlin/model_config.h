// Typed model configurations from Hugging Face `config.json` and `generation_config.json`.
// Each supported model_type gets the defaults of its Transformers config class, so code above
// never looks at JSON keys, aliases or spellings (rope_scaling vs rope_parameters, "type" vs
// "rope_type", n_routed_experts vs num_experts vs num_local_experts).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "marlin/dtype.h"

namespace marlin {

enum class ModelType {
  llama,
  mistral,
  qwen2,
  qwen3,
  qwen3_moe,
  mixtral,
  deepseek_v2,
  deepseek_v3,
  glm4_moe_lite,
};
std::string_view model_type_name(ModelType type);
// "llama, mistral, ..." for error messages.
std::string supported_model_types();

enum class RopeType { default_rope, linear, llama3, yarn };
std::string_view rope_type_name(RopeType type);  // the config's spelling: "default", "linear", ...

// Rotary position embedding scaling. Fields other than those of `type` keep their defaults.
struct RopeScaling {
  RopeType type = RopeType::default_rope;
  double factor = 1.0;            // linear, llama3, yarn
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3: required; yarn: as given, else nullopt (Transformers then uses
  // max_position_embeddings, and when it is given, uses max/original as the yarn factor).
  std::optional<int64_t> original_max_position_embeddings;
  double beta_fast = 32.0;                 // yarn
  double beta_slow = 1.0;                  // yarn
  std::optional<double> mscale;            // yarn (DeepSeek)
  std::optional<double> mscale_all_dim;    // yarn (DeepSeek)
  std::optional<double> attention_factor;  // yarn
};

// Multi-head latent attention (deepseek_v2, deepseek_v3, glm4_moe_lite).
struct MlaConfig {
  std::optional<int64_t> q_lora_rank;  // nullopt: a plain q_proj (DeepSeek-V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

enum class RouterScoring { softmax, sigmoid };
enum class TopkMethod { greedy, group_limited_greedy, noaux_tc };

struct MoeConfig {
  int64_t num_experts = 0;  // n_routed_experts / num_experts / num_local_experts
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;  // per expert (Mixtral: intermediate_size)
  int64_t n_shared_experts = 0;
  bool norm_topk_prob = false;  // renormalize the chosen experts' weights to sum 1
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;     // expert groups for group-limited top-k
  int64_t topk_group = 1;  // groups a token may choose from
  TopkMethod topk_method = TopkMethod::greedy;
  RouterScoring scoring_func = RouterScoring::softmax;
};

struct ModelConfig {
  ModelType model_type = ModelType::llama;
  std::string source;        // the file it came from, for error messages of later layers
  std::string architecture;  // architectures[0], or empty
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA; = num_attention_heads when absent
  // Query/key head size: explicit, or hidden_size / heads; with MLA, qk_nope + qk_rope.
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;  // = head_dim, or MLA's v_head_dim
  int64_t rotary_dim =
      0;  // dims that RoPE rotates: head_dim * partial_rotary_factor, MLA's qk_rope
  double partial_rotary_factor = 1.0;
  bool rope_interleave = false;  // rotate pairs (2i, 2i+1) instead of halves (DeepSeek/GLM MLA)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  bool attention_bias = false;         // q/k/v projections (Qwen2: always)
  bool attention_output_bias = false;  // o_proj
  bool mlp_bias = false;
  bool qk_norm = false;  // per-head RMSNorm of q and k (Qwen3)
  std::optional<int64_t> sliding_window;
  std::vector<bool> sliding_window_layers;  // per layer: attends within sliding_window only
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  std::optional<DType> torch_dtype;  // torch_dtype or dtype: bf16, f16, f32
  std::optional<MlaConfig> mla;
  std::optional<MoeConfig> moe;
  std::vector<bool> moe_layers;        // per layer: MoE block (true) or dense MLP
  std::vector<int64_t> eos_token_ids;  // a number or a list in the file
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  // The whole file, for blocks this struct does not type (quantization_config, ...).
  std::shared_ptr<const nlohmann::json> raw;

  bool is_moe_layer(int64_t layer) const;
  bool uses_sliding_window(int64_t layer) const;
};

// Parses config.json text; `source` names the file in errors. An unsupported model_type lists
// the supported ones; a missing required key or a value of the wrong JSON type names the key.
ModelConfig parse_model_config(std::string_view json_text,
                               const std::string& source = "config.json");
// `path`: config.json itself, or the model directory holding it.
ModelConfig load_model_config(const std::string& path);

// generation_config.json: only what the file sets; the runtime supplies the rest.
struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<double> repetition_penalty;
  std::optional<bool> do_sample;
  std::optional<int64_t> max_new_tokens;
  std::optional<int64_t> max_length;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
};

GenerationDefaults parse_generation_config(std::string_view json_text,
                                           const std::string& source = "generation_config.json");
// `path`: the file, or a model directory; a directory without the file gives empty defaults.
GenerationDefaults load_generation_config(const std::string& path);

}  // namespace marlin
