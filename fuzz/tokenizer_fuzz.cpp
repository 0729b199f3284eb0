// libFuzzer target for the tokenizer. The first byte picks what the rest is:
//  - even: text for the built-in lossless byte-level tokenizer (decode(encode(x)) == x for valid
//    UTF-8) and for the tokenizers of tests/fixtures/tokenizers (decode and streaming decode give
//    the same valid UTF-8);
//  - odd: a tokenizer.json, which either loads or fails with marlin::Error, and then encodes and
//    decodes a fixed text.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/tokenizer_internal.h"
#include "marlin/error.h"
#include "marlin/tokenizer.h"

namespace {

using marlin::Tokenizer;
namespace fs = std::filesystem;

fs::path scratch_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("marlin_tokenizer_fuzz_" + std::to_string(getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string write_scratch(const std::string& name, const std::string& content) {
  const fs::path path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

// Byte-level BPE over all 256 bytes with a few merges and added tokens, no normalizer and no
// stripping: every valid UTF-8 text must decode back to itself.
std::string lossless_tokenizer_json() {
  using nlohmann::json;
  json vocab = json::object();
  int32_t next_id = 0;
  for (int b = 0; b < 256; ++b) vocab[marlin::tokenizer_detail::byte_level_char(static_cast<unsigned char>(b))] = next_id++;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"t", "h"}, {"th", "e"}, {"\xC4\xA0", "t"}, {"\xC4\xA0t", "h"}, {"\xC4\xA0th", "e"}, {"i", "n"}, {"in", "g"},
      {"e", "r"}, {"a", "n"}, {"\xC4\xA0", "a"}, {"\xC4\xA0", "\xC4\xA0"}, {"1", "2"}, {"12", "3"}};
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next_id++;
    merge_list.push_back(json::array({a, b}));
  }
  json added = json::array();
  for (const char* content : {"<|end|>", "<|start|>"})
    added.push_back({{"id", next_id++}, {"content", content}, {"special", true}, {"lstrip", false},
                     {"rstrip", false}, {"single_word", false}, {"normalized", false}});
  added.push_back({{"id", next_id++}, {"content", "[W]"}, {"special", false}, {"lstrip", false},
                   {"rstrip", false}, {"single_word", true}, {"normalized", true}});
  const json split = {{"type", "Split"},
                      {"pattern", {{"Regex", R"((?i:'s|'t|'re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                      {"behavior", "Isolated"}, {"invert", false}};
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  const json root = {{"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr},
                     {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
                     {"post_processor", nullptr}, {"decoder", {{"type", "ByteLevel"}}},
                     {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  return root.dump();
}

struct Tokenizers {
  std::unique_ptr<Tokenizer> lossless;
  std::vector<Tokenizer> fixtures;
};

const Tokenizers& tokenizers() {
  static const Tokenizers all = [] {
    Tokenizers t;
    t.lossless = std::make_unique<Tokenizer>(
        Tokenizer::from_files(write_scratch("lossless.json", lossless_tokenizer_json())));
    const fs::path fixtures = fs::path(__FILE__).parent_path().parent_path() / "tests" / "fixtures" / "tokenizers";
    for (const char* name : {"llama3_bpe", "sp_bpe", "sp_metaspace"})
      if (fs::exists(fixtures / name / "tokenizer.json"))
        t.fixtures.push_back(Tokenizer::from_dir((fixtures / name).string()));
    return t;
  }();
  return all;
}

// decode and a token-by-token stream agree, and both are valid UTF-8.
void check_decoding(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  const std::string full = tok.decode(ids, skip_special);
  if (!marlin::tokenizer_detail::utf8_is_valid(full)) std::abort();
  marlin::StreamDecoder stream(tok, skip_special);
  std::string streamed;
  for (const int32_t id : ids) {
    const std::string piece = stream.step(id);
    if (!marlin::tokenizer_detail::utf8_is_valid(piece)) std::abort();
    streamed += piece;
  }
  streamed += stream.flush();
  if (streamed != full) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    const Tokenizers& all = tokenizers();
    const std::vector<int32_t> ids = all.lossless->encode(rest, false);
    if (marlin::tokenizer_detail::utf8_is_valid(rest) && all.lossless->decode(ids) != rest) std::abort();
    check_decoding(*all.lossless, ids, false);
    for (const Tokenizer& tok : all.fixtures) {
      check_decoding(tok, tok.encode(rest, true), data[0] % 4 == 0);
    }
    return 0;
  }
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = std::make_unique<Tokenizer>(Tokenizer::from_files(write_scratch("fuzzed.json", rest)));
  } catch (const marlin::Error&) {
    return 0;  // refused cleanly
  }
  try {
    const std::vector<int32_t> ids = tok->encode("Hello world! 123 caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD\n\n", true);
    for (const int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size()) std::abort();
    check_decoding(*tok, ids, false);
  } catch (const marlin::Error&) {
    // A regex that exceeds PCRE2's match limits is refused at encode time.
  }
  return 0;
}
