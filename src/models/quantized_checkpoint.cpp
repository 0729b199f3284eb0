// save_quantized / load_quantized: a quantized model as a Hugging Face style directory.
#include "models/quantized_checkpoint.h"

#include <nlohmann/json.hpp>
#include <filesystem>
#include <fstream>
#include <utility>

#include "marlin/moe.h"
#include "models/deepseek.h"
#include "models/llama.h"
#include "models/moe_weights.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// HF's default max_shard_size; tiny models stay one model.safetensors.
constexpr uint64_t kMaxShardBytes = 5'000'000'000ull;

const char* const kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                       "generation_config.json", "chat_template.jinja",
                                       "special_tokens_map.json", "tokenizer.model"};

std::string_view scales_name(ScaleMethod m) { return m == ScaleMethod::mse ? "mse" : "rtn"; }

// A CPU tensor in `dtype`, contiguous, for the writer.
Tensor host(const Tensor& t, DType dtype) { return t.to(Device::cpu()).to(dtype).contiguous(); }

}  // namespace

bool module_matches(const std::vector<std::string>& fragments, const std::string& name) {
  for (const std::string& f : fragments)
    if (!f.empty() && name.find(f) != std::string::npos) return true;
  return false;
}

std::optional<MarlinQuantization> marlin_quantization(const ModelConfig& config) {
  constexpr const char* op = "load_quantized";
  if (!config.raw || !config.raw->contains("quantization_config")) return std::nullopt;
  const json& q = config.raw->at("quantization_config");
  MARLIN_CHECK(q.is_object(), op, "quantization_config in ", config.source, " must be an object");
  MARLIN_CHECK(q.contains("quant_method") && q["quant_method"].is_string(), op,
               "quantization_config.quant_method in ", config.source, " is missing or not a string");
  const std::string method = q["quant_method"].get<std::string>();
  MARLIN_CHECK(method == "marlin", op, "quantization_config.quant_method '", method, "' in ",
               config.source, " is not supported (only checkpoints of save_quantized: marlin)");
  auto integer = [&](const char* key) {
    MARLIN_CHECK(q.contains(key) && q[key].is_number_integer(), op, "quantization_config.", key,
                 " in ", config.source, " is missing or not an integer");
    return q[key].get<int>();
  };
  MarlinQuantization out;
  out.bits = integer("bits");
  MARLIN_CHECK(out.bits == 2 || out.bits == 4 || out.bits == 8, op, "quantization_config.bits in ",
               config.source, " must be 2, 4 or 8, got ", out.bits);
  out.group_size = integer("group_size");
  MARLIN_CHECK(is_valid_group_size(out.group_size), op, "quantization_config.group_size in ",
               config.source, " is not a valid group size: ", out.group_size);
  const std::string expected(format_name(format_from_bits(out.bits)));
  MARLIN_CHECK(q.contains("format") && q["format"].is_string() &&
                   q["format"].get<std::string>() == expected,
               op, "quantization_config.format in ", config.source, " must be \"", expected,
               "\" for bits ", out.bits);
  if (q.contains("modules_not_converted")) {
    const json& m = q["modules_not_converted"];
    MARLIN_CHECK(m.is_array(), op, "quantization_config.modules_not_converted in ", config.source,
                 " must be a list of module names");
    for (const json& name : m) {
      MARLIN_CHECK(name.is_string() && !name.get<std::string>().empty(), op,
                   "quantization_config.modules_not_converted in ", config.source,
                   " must hold non-empty module names, got ", name.dump());
      out.modules_not_converted.push_back(name.get<std::string>());
    }
  }
  if (q.contains("scales")) {
    MARLIN_CHECK(q["scales"].is_string() && (q["scales"] == "rtn" || q["scales"] == "mse"), op,
                 "quantization_config.scales in ", config.source, " must be \"rtn\" or \"mse\"");
    out.scales = q["scales"] == "mse" ? ScaleMethod::mse : ScaleMethod::absmax;
  }
  return out;
}

QuantizedLinear load_packed_linear(const WeightSource& weights, const std::string& prefix,
                                   int64_t in, int64_t out, const Tensor& bias, int bits,
                                   int group_size, const LayerPlacement& placement) {
  MARLIN_CHECK(bits == 2 || bits == 4 || bits == 8, "load_quantized", prefix,
               ".weight_packed found but the config gives no quantization_config (bits ", bits, ")");
  QuantizedWeight q;
  q.format = format_from_bits(bits);
  q.group_size = group_size;
  q.K = in;
  q.N = out;
  MARLIN_CHECK(in % format_values_per_word(q.format) == 0 && in % group_size == 0, "load_quantized",
               prefix, ": in_features ", in, " is not a multiple of the group size ", group_size);
  const std::string pn = prefix + ".weight_packed", sn = prefix + ".weight_scale";
  q.packed = weights.get_exact(pn, DType::u32, {in / format_values_per_word(q.format), out},
                               "load_quantized");
  q.scales = weights.get_exact(sn, DType::f16, {in / group_size, out}, "load_quantized");
  return QuantizedLinear::from_quantized(q, bias, placement);
}

void save_quantized(const CausalLM& model, const std::string& dir) {
  constexpr const char* op = "save_quantized";
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  const auto* deepseek = dynamic_cast<const DeepseekModel*>(&model);
  MARLIN_CHECK(llama != nullptr || deepseek != nullptr, op, "only llama-family and MLA models (",
               "deepseek_v2, deepseek_v3, glm4_moe_lite) can be saved, not ",
               model_type_name(model.config().model_type));
  const ModelConfig& c = model.config();
  const ModelLoadOptions& lo = llama ? llama->load_options() : deepseek->load_options();
  // 16-bit tensors go back in the checkpoint's dtype (lossless when the model computes wider).
  const DType dtype = c.torch_dtype.value_or(model.dtype());

  NamedTensors tensors;
  auto add = [&](const std::string& name, const Tensor& t) { tensors.emplace_back(name, host(t, dtype)); };
  // The quantized linears' one format (bits, group size), the first of them, and the modules
  // kept 16-bit.
  std::optional<std::pair<int, int>> format;
  std::string first_quantized;
  json not_converted = json::array({"model.embed_tokens"});
  auto add_linear = [&](const std::string& prefix, const QuantizedLinear& l) {
    if (l.bits() == 16) {
      add(prefix + ".weight", l.weight().transpose(0, 1));  // [K, N] -> HF's [out, in]
      not_converted.push_back(prefix);
    } else {
      const std::pair<int, int> f{l.bits(), l.group_size()};
      if (!format) {
        format = f;
        first_quantized = prefix;
      }
      MARLIN_CHECK(*format == f, op, prefix, " is quantized to ", f.first, " bits with group size ",
                   f.second, " but ", first_quantized, " to ", format->first, " bits with group size ",
                   format->second, ": a checkpoint holds one format");
      tensors.emplace_back(prefix + ".weight_packed", host(l.qweight().packed, DType::u32));
      tensors.emplace_back(prefix + ".weight_scale", host(l.qweight().scales, DType::f16));
    }
    if (l.bias().defined()) add(prefix + ".bias", l.bias());
  };
  // The router (and DeepSeek's score bias) stays unquantized, under its checkpoint name.
  auto add_router = [&](const std::string& mp, const MoE& moe) {
    add(mp + ".gate.weight", moe.router_weight());
    if (moe.e_score_correction_bias().defined())
      tensors.emplace_back(mp + ".gate.e_score_correction_bias",
                           host(moe.e_score_correction_bias(), DType::f32));
  };
  if (deepseek != nullptr) {
    // Every linear under the module path the loader reads (experts and shared experts
    // included, lm_head last); the norms and routers beside them.
    add("model.embed_tokens.weight", deepseek->embed_tokens().table());
    deepseek->for_each_linear(add_linear);
    for (size_t i = 0; i < deepseek->layers().size(); ++i) {
      const DeepseekBlock& b = deepseek->layers()[i];
      const std::string p = "model.layers." + std::to_string(i);
      add(p + ".input_layernorm.weight", b.input_layernorm().weight());
      add(p + ".post_attention_layernorm.weight", b.post_attention_layernorm().weight());
      const MLAProjections& proj = b.self_attn().projections();
      if (proj.q_a_layernorm.defined())
        add(p + ".self_attn.q_a_layernorm.weight", proj.q_a_layernorm.weight());
      add(p + ".self_attn.kv_a_layernorm.weight", proj.kv_a_layernorm.weight());
      if (const MoE* moe = b.moe()) add_router(moe_prefix(c, static_cast<int64_t>(i)), *moe);
    }
    add("model.norm.weight", deepseek->norm().weight());
  }
  if (llama != nullptr) add("model.embed_tokens.weight", llama->embed_tokens().table());
  for (size_t i = 0; llama != nullptr && i < llama->layers().size(); ++i) {
    const TransformerBlock& b = llama->layers()[i];
    const std::string p = "model.layers." + std::to_string(i);
    add(p + ".input_layernorm.weight", b.input_layernorm().weight());
    add(p + ".post_attention_layernorm.weight", b.post_attention_layernorm().weight());
    const Attention& a = b.self_attn();
    add_linear(p + ".self_attn.q_proj", a.q_proj());
    add_linear(p + ".self_attn.k_proj", a.k_proj());
    add_linear(p + ".self_attn.v_proj", a.v_proj());
    add_linear(p + ".self_attn.o_proj", a.o_proj());
    if (a.q_norm().defined()) add(p + ".self_attn.q_norm.weight", a.q_norm().weight());
    if (a.k_norm().defined()) add(p + ".self_attn.k_norm.weight", a.k_norm().weight());
    if (const MoE* moe = b.moe()) {
      // Experts under their checkpoint names, quantized like any linear; the router (and
      // DeepSeek's score bias) unquantized.
      const std::string mp = moe_prefix(c, static_cast<int64_t>(i));
      const ExpertNames names = expert_names(c);
      for (size_t e = 0; e < moe->experts().size(); ++e) {
        const MLP& x = moe->experts()[e];
        const std::string ep = mp + ".experts." + std::to_string(e) + ".";
        add_linear(ep + names.gate, x.gate_proj());
        add_linear(ep + names.up, x.up_proj());
        add_linear(ep + names.down, x.down_proj());
      }
      if (moe->has_shared_experts()) {
        add_linear(mp + ".shared_experts.gate_proj", moe->shared_experts().gate_proj());
        add_linear(mp + ".shared_experts.up_proj", moe->shared_experts().up_proj());
        add_linear(mp + ".shared_experts.down_proj", moe->shared_experts().down_proj());
      }
      add_router(mp, *moe);
    } else {
      add_linear(p + ".mlp.gate_proj", b.mlp().gate_proj());
      add_linear(p + ".mlp.up_proj", b.mlp().up_proj());
      add_linear(p + ".mlp.down_proj", b.mlp().down_proj());
    }
  }
  // A tied lm_head is the embeddings unless it was quantized on its own (MLA models are
  // never tied: their lm_head went with the other linears).
  bool untie = false;
  if (llama != nullptr) {
    add("model.norm.weight", llama->norm().weight());
    untie = c.tie_word_embeddings && llama->lm_head().bits() != 16;
    if (!c.tie_word_embeddings || untie) {
      add_linear("lm_head", llama->lm_head());
    } else {
      not_converted.push_back("lm_head");
    }
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  MARLIN_CHECK(!ec && fs::is_directory(dir), op, "cannot create directory '", dir, "': ", ec.message());
  save_safetensors_sharded(dir, tensors, kMaxShardBytes, {{"format", "pt"}});

  json config = c.raw ? *c.raw : json::object();
  config.erase("quantization_config");
  if (format) {
    config["quantization_config"] = {
        {"quant_method", "marlin"},
        {"bits", format->first},
        {"group_size", format->second},
        {"format", std::string(format_name(format_from_bits(format->first)))},
        {"scales", std::string(scales_name(lo.scales))},
        {"modules_not_converted", not_converted}};
  }
  if (untie) config["tie_word_embeddings"] = false;
  const fs::path config_path = fs::path(dir) / "config.json";
  std::ofstream f(config_path);
  f << config.dump(2) << "\n";
  MARLIN_CHECK(f.good(), op, "cannot write ", config_path.string());
  f.close();

  const fs::path src = fs::path(c.source).parent_path();
  for (const char* name : kTokenizerFiles) {
    if (!fs::exists(src / name)) continue;
    if (fs::exists(fs::path(dir) / name) && fs::equivalent(src / name, fs::path(dir) / name, ec))
      continue;  // saving into the source directory
    fs::copy_file(src / name, fs::path(dir) / name, fs::copy_options::overwrite_existing, ec);
    MARLIN_CHECK(!ec, op, "cannot copy ", (src / name).string(), " to ", dir, ": ", ec.message());
  }
}

std::unique_ptr<CausalLM> load_quantized(const std::string& dir, Device device) {
  ModelLoadOptions options;
  options.device = device;
  return load_model(dir, options);  // takes bits and group size from quantization_config
}

}  // namespace marlin
