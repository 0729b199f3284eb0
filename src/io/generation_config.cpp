// generation_config.json -> GenerationDefaults: the sampling defaults a model ships with.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/json_fields.h"
#include "marlin/error.h"
#include "marlin/model_config.h"

namespace marlin {

namespace {
constexpr std::string_view kOp = "generation_config";
}

GenerationDefaults parse_generation_config(std::string_view json_text, const std::string& source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail(kOp, source, ": not valid JSON: ", e.what());
  }
  const io::JsonFields f(json, source, kOp);
  GenerationDefaults g;
  g.temperature = f.optional_number("temperature");
  g.top_p = f.optional_number("top_p");
  g.top_k = f.optional_int("top_k");
  g.repetition_penalty = f.optional_number("repetition_penalty");
  g.do_sample = f.optional_bool("do_sample");
  g.max_new_tokens = f.optional_int("max_new_tokens");
  g.max_length = f.optional_int("max_length");
  g.eos_token_ids = f.int_or_int_list("eos_token_id");
  g.bos_token_id = f.optional_int("bos_token_id");
  g.pad_token_id = f.optional_int("pad_token_id");
  // Ranges Transformers' GenerationConfig.validate() also insists on.
  if (g.temperature && *g.temperature < 0.0) f.fail_key("temperature", "must not be negative");
  if (g.top_p && !(*g.top_p > 0.0 && *g.top_p <= 1.0)) f.fail_key("top_p", "must be in (0, 1]");
  if (g.top_k && *g.top_k < 0) f.fail_key("top_k", "must not be negative");
  if (g.repetition_penalty && !(*g.repetition_penalty > 0.0))
    f.fail_key("repetition_penalty", "must be positive");
  if (g.max_new_tokens && *g.max_new_tokens < 0)
    f.fail_key("max_new_tokens", "must not be negative");
  if (g.max_length && *g.max_length < 0) f.fail_key("max_length", "must not be negative");
  return g;
}

GenerationDefaults load_generation_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    const auto file = std::filesystem::path(path) / "generation_config.json";
    if (!std::filesystem::exists(file, ec)) return {};  // optional in a model directory
    return parse_generation_config(io::read_text_file(file.string(), kOp), file.string());
  }
  return parse_generation_config(io::read_text_file(path, kOp), path);
}

}  // namespace marlin
