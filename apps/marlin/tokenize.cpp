// marlin tokenize: text -> ids (--text) or ids -> text (--decode) with a model directory's
// tokenizer, so tokenization can be checked from outside.
#include <nlohmann/json.hpp>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "token_ids.h"
#include "marlin/error.h"
#include "marlin/tokenizer.h"

namespace marlin::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string text;
  std::string decode;
  bool json = false;
  bool no_special_tokens = false;
};

// Ids within the vocabulary.
std::vector<int32_t> parse_ids(const std::string& list, int32_t vocab_size) {
  std::vector<int32_t> ids;
  for (const int64_t id : parse_token_ids("tokenize", "--decode", list)) {
    if (id >= vocab_size) fail("tokenize", "--decode: id ", id, " is outside the vocabulary [0, ", vocab_size, ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

void run(const TokenizeOptions& opts) {
  const Tokenizer tokenizer = Tokenizer::from_dir(opts.model);
  if (!opts.decode.empty()) {
    const std::string text =
        tokenizer.decode(parse_ids(opts.decode, tokenizer.vocab_size()), opts.no_special_tokens);
    if (opts.json)
      std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
    else
      std::cout << text << "\n";
    return;
  }
  const std::vector<int32_t> ids = tokenizer.encode(opts.text, !opts.no_special_tokens);
  if (opts.json) {
    std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "encode text to token ids, or decode ids to text");
  cmd->add_option("--model", opts->model, "model directory with tokenizer.json")->required();
  auto* text = cmd->add_option("--text", opts->text, "text to encode");
  auto* decode = cmd->add_option("--decode", opts->decode, "ids to decode, e.g. 1,2,3");
  text->excludes(decode);
  cmd->add_flag("--json", opts->json, "print one JSON object: {\"ids\": [...]} or {\"text\": ...}");
  cmd->add_flag("--no-special-tokens", opts->no_special_tokens,
                "encode without bos/eos; decode without special tokens");
  cmd->callback([opts, text, decode] {
    if (text->count() == 0 && decode->count() == 0)
      fail("tokenize", "give --text TEXT to encode or --decode IDS to decode");
    if (decode->count() > 0 && opts->decode.find_first_not_of(" ,\t\n") == std::string::npos)
      fail("tokenize", "--decode needs at least one id");
    run(*opts);
  });
}

}  // namespace marlin::cli
