// marlin generate: text (or ids) from a model directory, streamed as it is generated; and
// marlin score: the logits of every prompt position as a float32 .npy, for checks from outside.
#include <nlohmann/json.hpp>
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "token_ids.h"
#include "marlin/error.h"
#include "marlin/generate.h"
#include "marlin/model.h"
#include "marlin/model_config.h"
#include "marlin/npy.h"
#include "marlin/tokenizer.h"

namespace marlin::cli {
namespace {

struct ModelOptions {
  std::string dir;
  std::string prompt;
  std::string prompt_ids;
  std::string device = "cpu";
  int bits = 16;
  int group_size = 128;
};

struct GenerateOptions {
  ModelOptions model;
  std::optional<int64_t> max_new_tokens;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<int64_t> top_k;
  std::optional<uint64_t> seed;
  bool json = false;
};

std::vector<int64_t> parse_ids(const char* op, const std::string& list) {
  std::vector<int64_t> ids = parse_token_ids(op, "--prompt-ids", list);
  if (ids.empty()) fail(op, "--prompt-ids needs at least one id");
  return ids;
}

bool has_tokenizer(const std::string& dir) {
  return std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json");
}

std::unique_ptr<CausalLM> load(const char* op, const ModelOptions& o) {
  if (!std::filesystem::is_directory(o.dir)) fail(op, "model directory '", o.dir, "' not found");
  if (o.bits != 16 && o.bits != 8 && o.bits != 4 && o.bits != 2)
    fail(op, "--bits must be 16, 8, 4 or 2, got ", o.bits);
  ModelLoadOptions options;
  if (o.device == "cuda")
    options.device = Device::cuda(0);
  else if (o.device != "cpu")
    fail(op, "--device must be cpu or cuda, got '", o.device, "'");
  options.bits = o.bits;
  options.group_size = o.group_size;
  return load_model(o.dir, options);
}

// The prompt as ids: --prompt-ids as given, or --prompt through the directory's tokenizer.
std::vector<int64_t> prompt_ids(const char* op, const ModelOptions& o,
                                const std::optional<Tokenizer>& tokenizer) {
  if (!o.prompt_ids.empty()) return parse_ids(op, o.prompt_ids);
  if (!tokenizer)
    fail(op, "'", o.dir, "' has no tokenizer.json: give the prompt as --prompt-ids 1,2,3");
  const std::vector<int32_t> ids = tokenizer->encode(o.prompt);
  return {ids.begin(), ids.end()};
}

// GenerationConfig's defaults, then the model's generation_config.json, then the flags.
GenerationConfig make_config(const GenerateOptions& o, const CausalLM& model) {
  GenerationConfig c;
  const GenerationDefaults file = load_generation_config(o.model.dir);
  if (file.max_new_tokens) c.max_new_tokens = *file.max_new_tokens;
  if (file.temperature) c.temperature = static_cast<float>(*file.temperature);
  if (file.top_p) c.top_p = static_cast<float>(*file.top_p);
  if (file.top_k) c.top_k = *file.top_k;
  if (file.repetition_penalty) c.repetition_penalty = static_cast<float>(*file.repetition_penalty);
  if (file.do_sample) c.do_sample = *file.do_sample;
  if (file.pad_token_id) c.pad_token_id = *file.pad_token_id;
  if (!file.eos_token_ids.empty())
    c.eos_token_id = file.eos_token_ids;
  else if (!model.config().eos_token_ids.empty())
    c.eos_token_id = model.config().eos_token_ids;
  if (o.max_new_tokens) c.max_new_tokens = *o.max_new_tokens;
  if (o.temperature) {
    c.temperature = *o.temperature;
    // An explicit temperature asks for sampling (or, at 0, for greedy) whatever the file says.
    c.do_sample = *o.temperature > 0.0f;
  }
  if (o.top_p) c.top_p = *o.top_p;
  if (o.top_k) c.top_k = *o.top_k;
  if (o.repetition_penalty) c.repetition_penalty = *o.repetition_penalty;
  c.seed = o.seed;
  return c;
}

void run_generate(const GenerateOptions& o) {
  const char* op = "generate";
  const auto model = load(op, o.model);
  std::optional<Tokenizer> tokenizer;
  if (has_tokenizer(o.model.dir)) tokenizer = Tokenizer::from_dir(o.model.dir);
  const std::vector<int64_t> prompt = prompt_ids(op, o.model, tokenizer);
  const GenerationConfig config = make_config(o, *model);

  std::optional<StreamDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer, /*skip_special_tokens=*/true);
  bool echoed = false;
  Streamer streamer = [&](int64_t id) {
    if (o.json) return;
    // The prompt is echoed with the first token, so that a run that fails prints only its error.
    if (!echoed) std::cout << (o.model.prompt.empty() ? o.model.prompt_ids + " |" : o.model.prompt);
    echoed = true;
    if (decoder)
      std::cout << decoder->step(static_cast<int32_t>(id));
    else
      std::cout << " " << id;
    std::cout << std::flush;
  };
  GenerationStats stats;
  const Tensor ids = Tensor::from_vector(prompt, {static_cast<int64_t>(prompt.size())}, DType::i64);
  const Tensor out = generate(*model, ids, config, nullptr, streamer, &stats);

  std::vector<int32_t> generated;
  for (int64_t i = static_cast<int64_t>(prompt.size()); i < out.numel(); ++i)
    generated.push_back(out.data<int32_t>()[i]);
  // Decode speed: the tokens after the first, which the prefill timing covers.
  const double decode_tokens = static_cast<double>(std::max<int64_t>(stats.generated_tokens - 1, 0));
  const double tokens_per_s = stats.decode_ms > 0 ? decode_tokens * 1000.0 / stats.decode_ms : 0.0;
  if (o.json) {
    nlohmann::json j;
    j["ids"] = generated;
    j["text"] = tokenizer ? nlohmann::json(tokenizer->decode(generated, true)) : nlohmann::json();
    j["timings"] = {{"prefill_ms", stats.prefill_ms},
                    {"decode_ms", stats.decode_ms},
                    {"tokens_per_s", tokens_per_s}};
    std::cout << j.dump() << "\n";
    return;
  }
  if (decoder) std::cout << decoder->flush();
  std::cout << std::endl;  // before the stats on stderr
  std::cerr << "[" << prompt.size() << " prompt tokens, " << stats.generated_tokens
            << " generated; prefill " << stats.prefill_ms << " ms, decode " << tokens_per_s
            << " tokens/s]\n";
}

void run_score(const ModelOptions& o, const std::string& out_path) {
  const char* op = "score";
  const auto model = load(op, o);
  std::optional<Tokenizer> tokenizer;
  if (o.prompt_ids.empty() && has_tokenizer(o.dir)) tokenizer = Tokenizer::from_dir(o.dir);
  const std::vector<int64_t> prompt = prompt_ids(op, o, tokenizer);
  const int64_t context = model->config().max_position_embeddings;
  MARLIN_CHECK(context <= 0 || static_cast<int64_t>(prompt.size()) <= context, op, "prompt (",
               prompt.size(), " tokens) exceeds the model's context of ", context, " positions");
  const Tensor ids = Tensor::from_vector(prompt, {static_cast<int64_t>(prompt.size())}, DType::i64);
  const Tensor logits = model->forward(ids).to(Device::cpu()).to(DType::f32);
  save_npy(out_path, logits);
  std::cerr << "wrote logits " << logits.describe() << " to " << out_path << "\n";
}

void add_model_options(CLI::App* cmd, ModelOptions& o) {
  cmd->add_option("-m,--model", o.dir, "model directory (config.json, safetensors)")->required();
  auto* text = cmd->add_option("--prompt", o.prompt, "prompt text (needs tokenizer.json)");
  auto* ids = cmd->add_option("--prompt-ids", o.prompt_ids, "prompt token ids, e.g. 1,2,3");
  text->excludes(ids);
  cmd->add_option("--device", o.device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--bits", o.bits, "16 keeps the weights as stored; 8, 4, 2: FP8, FP4, INT2")
      ->capture_default_str();
  cmd->add_option("--group-size", o.group_size, "quantization group size")->capture_default_str();
}

void require_prompt(const char* op, const ModelOptions& o) {
  if (o.prompt.empty() && o.prompt_ids.empty())
    fail(op, "give --prompt TEXT or --prompt-ids 1,2,3");
}

}  // namespace

void register_generate(CLI::App& app) {
  auto g = std::make_shared<GenerateOptions>();
  CLI::App* gen = app.add_subcommand(
      "generate", "generate text from a prompt; sampling defaults come from the model's "
                  "generation_config.json, else GenerationConfig's");
  add_model_options(gen, g->model);
  gen->add_option("-n,--max-new-tokens", g->max_new_tokens, "tokens to generate (default 256)");
  gen->add_option("--temperature", g->temperature, "0 is greedy (default 0.7)");
  gen->add_option("--top-k", g->top_k, "0 is off (default 50)");
  gen->add_option("--top-p", g->top_p, "1 is off (default 0.9)");
  gen->add_option("--repetition-penalty", g->repetition_penalty, "1 is off (default 1.1)");
  gen->add_option("--seed", g->seed, "sampler seed, for repeatable runs");
  gen->add_flag("--json", g->json,
                "print one JSON object: {ids, text, timings: {prefill_ms, decode_ms, tokens_per_s}}");
  gen->callback([g] {
    require_prompt("generate", g->model);
    run_generate(*g);
  });

  auto s = std::make_shared<ModelOptions>();
  auto out = std::make_shared<std::string>();
  CLI::App* score = app.add_subcommand("score", "write the logits of every prompt position (f32 .npy)");
  add_model_options(score, *s);
  score->add_option("--out", *out, "output .npy: f32 [T, vocab]")->required();
  score->callback([s, out] {
    require_prompt("score", *s);
    run_score(*s, *out);
  });
}

}  // namespace marlin::cli
