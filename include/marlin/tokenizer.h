// Text <-> token ids from a Hugging Face tokenizer.json (+ tokenizer_config.json), with the same
// ids as the `tokenizers` library: byte-level BPE (GPT-2, Llama-3, Qwen, DeepSeek) and
// SentencePiece-style BPE with byte fallback. docs/TOKENIZER.md lists what is supported.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace marlin {

namespace tokenizer_detail {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json.
  static Tokenizer from_dir(const std::string& dir);
  // tokenizer_config_json may be empty: no bos/eos then, and the post_processor decides.
  static Tokenizer from_files(const std::string& tokenizer_json,
                              const std::string& tokenizer_config_json = "");

  // Ill-formed UTF-8 in `text` is replaced by U+FFFD first (as Python's errors="replace").
  // add_special_tokens: bos/eos as tokenizer_config.json's add_bos_token/add_eos_token say when
  // it sets them, else as tokenizer.json's post_processor (TemplateProcessing, Bert, Roberta).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside the vocabulary are skipped, as the `tokenizers` library does. Always valid UTF-8.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // One past the largest id of the model vocabulary and the added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tokenizer_detail::TokenizerImpl> impl);
  std::shared_ptr<const tokenizer_detail::TokenizerImpl> impl_;
};

// Incremental decoding for generation: step() returns the text that the new id completes, and
// holds back output while it would end in an incomplete character (U+FFFD) or while the newest id
// is a byte token (<0xXX>, whose run a later byte can still turn into U+FFFDs), so what it returns
// is always valid UTF-8 and the concatenation of all steps plus flush() equals decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(Tokenizer tokenizer, bool skip_special_tokens = false);
  std::string step(int32_t id);
  // The text still held back (an incomplete character at the very end decodes to U+FFFD).
  std::string flush();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // context tokens, then the tokens not yet emitted
  std::string prefix_;        // decode of the context tokens
  size_t prefix_index_ = 0;   // number of context tokens at the front of ids_
};

}  // namespace marlin
