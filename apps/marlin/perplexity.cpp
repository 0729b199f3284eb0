// marlin perplexity: a model's perplexity on a text file by Transformers' strided method (the
// Hugging Face docs' "Perplexity of fixed-length models"), the same computation as
// tools/perplexity_reference.py, at any weight width and scale method.
#include <nlohmann/json.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "marlin/error.h"
#include "marlin/model.h"
#include "marlin/perplexity.h"
#include "marlin/tokenizer.h"

namespace marlin::cli {
namespace {

struct PerplexityOptions {
  std::string model;
  std::string file;
  int64_t context = 0;  // 0: the model's max_position_embeddings
  int64_t stride = 0;   // 0: the context (non-overlapping windows)
  int64_t max_tokens = 0;  // 0: the whole text
  int bits = 16;
  int group_size = 128;
  std::string scales = "rtn";
  std::string device = "cpu";
  bool json = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("perplexity", "cannot open text file ", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (buffer.str().empty()) fail("perplexity", "text file ", path, " is empty");
  return buffer.str();
}

void run(const PerplexityOptions& o) {
  ModelLoadOptions load;
  load.device = Device::parse(o.device);
  load.bits = o.bits;
  load.group_size = o.group_size;
  load.scales = o.scales == "mse" ? ScaleMethod::mse : ScaleMethod::absmax;
  const auto load_start = std::chrono::steady_clock::now();
  const std::unique_ptr<CausalLM> model = load_model(o.model, load);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  // Tokenized once, with the tokenizer's special tokens (one bos at the start), as Transformers'
  // tokenizer(text) does in the reference.
  std::vector<int32_t> ids = Tokenizer::from_dir(o.model).encode(read_text(o.file), true);
  const int64_t text_tokens = static_cast<int64_t>(ids.size());
  if (o.max_tokens > 0 && o.max_tokens < text_tokens) ids.resize(static_cast<size_t>(o.max_tokens));
  const int64_t context = o.context > 0 ? o.context : model->config().max_position_embeddings;
  const int64_t stride = o.stride > 0 ? o.stride : context;
  const PerplexityResult r = strided_perplexity(*model, ids, context, stride);
  const double tokens_per_s = static_cast<double>(r.tokens_scored) / r.seconds;

  if (o.json) {
    std::cout << nlohmann::json{{"perplexity", r.perplexity}, {"nll_sum", r.nll_sum},
                                {"tokens", r.tokens_scored}, {"text_tokens", text_tokens},
                                {"used_tokens", ids.size()}, {"context", context},
                                {"stride", stride}, {"bits", o.bits},
                                {"group_size", o.group_size}, {"scales", o.scales},
                                {"device", load.device.str()}, {"seconds", r.seconds},
                                {"load_seconds", load_s}, {"tokens_per_s", tokens_per_s},
                                {"method", "transformers-strided"}}
                     .dump()
              << "\n";
    return;
  }
  std::printf("perplexity %.4f over %lld tokens (context %lld, stride %lld, %lld windows)\n",
              r.perplexity, static_cast<long long>(r.tokens_scored),
              static_cast<long long>(context), static_cast<long long>(stride),
              static_cast<long long>(r.windows));
  std::printf("%.0f tokens/s on %s (bits %d, group %d, %s scales; load %.2f s, scoring %.2f s)\n",
              tokens_per_s, load.device.str().c_str(), o.bits, o.group_size, o.scales.c_str(),
              load_s, r.seconds);
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto o = std::make_shared<PerplexityOptions>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity",
      "perplexity of a text file by Transformers' strided method (HF docs 'Perplexity of "
      "fixed-length models'), as tools/perplexity_reference.py computes it: the text is tokenized "
      "once (one bos at its start), windows of --context tokens start every --stride tokens, and "
      "each window scores only the tokens no earlier window scored");
  cmd->add_option("-m,--model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--file", o->file, "UTF-8 text file")->required();
  cmd->add_option("--context", o->context, "window in tokens (default: max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--stride", o->stride, "tokens between window starts (default: the context)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", o->max_tokens,
                  "score only the first N tokens of the tokenized text (default: all)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--bits", o->bits, "weight bits: 16 (unquantized), 8 (FP8), 4 (FP4), 2 (INT2)")
      ->check(CLI::IsMember({16, 8, 4, 2}));
  cmd->add_option("--group-size", o->group_size, "quantization group along K (32, 64, 128, 256)")
      ->check(CLI::IsMember({32, 64, 128, 256}));
  cmd->add_option("--scales", o->scales,
                  "quantization scales: rtn (absmax, round-to-nearest) or mse (least squared error)")
      ->check(CLI::IsMember({"rtn", "mse"}));
  cmd->add_option("--device", o->device, "cpu or cuda[:N]");
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->callback([o] {
    if (o->stride > 0 && o->context > 0 && o->stride > o->context)
      fail("perplexity", "--stride ", o->stride, " is larger than --context ", o->context);
    run(*o);
  });
}

}  // namespace marlin::cli
