// The parts of a tokenizer.json pipeline (normalizers, pre-tokenizers, the BPE model, decoders),
// shared by the tokenizer_*.cpp files. Each step mirrors the Hugging Face `tokenizers` step of the
// same name, so that ids match that library exactly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace marlin::tokenizer_detail {

using json = nlohmann::json;

// Ids above this are refused: the id -> token table is dense, and no real vocabulary comes close.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

// Every error names the file being read; `where` is a JSON path inside it ("model.merges[3]").
[[noreturn]] void fail_file(const std::string& file, const std::string& where,
                            const std::string& message);

// ---- UTF-8 (tokenizer_text.cpp) ----
inline size_t utf8_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
// Decodes the character at s[pos] (valid UTF-8 assumed) and advances pos past it.
char32_t utf8_next(std::string_view s, size_t& pos);
void utf8_append(std::string& out, char32_t cp);
bool utf8_is_valid(std::string_view s);
// Each maximal ill-formed subsequence becomes U+FFFD, as Rust's from_utf8_lossy and Python's
// errors="replace" do.
std::string utf8_make_valid(std::string_view bytes);
bool is_unicode_whitespace(char32_t cp);  // Unicode White_Space (Rust char::is_whitespace)
bool is_word_char(char32_t cp);           // Rust regex \w

// ---- Regular expressions: PCRE2, JIT-compiled, Oniguruma semantics for \s (tokenizer_text.cpp)
struct Match {
  size_t begin, end;
};
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& file);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // All non-overlapping matches, left to right (text must be valid UTF-8).
  void find_all(std::string_view text, std::vector<Match>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};
// A Split/Replace "pattern" object: {"String": s} (literal) or {"Regex": r}.
std::string pattern_to_regex(const json& pattern, const std::string& file, const std::string& where);

// The Replace normalizer and decoder: every match of "pattern" (string or regex) -> "content".
class Replacer {
 public:
  Replacer(const json& j, const std::string& file, const std::string& where);
  void replace_all(std::string& text) const;

 private:
  std::optional<std::string> literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// ---- Normalizers (tokenizer_normalize.cpp) ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};
// nullptr for a null normalizer.
std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& file,
                                             const std::string& where);

// ---- Pre-tokenizers (tokenizer_pretokenize.cpp) ----
// Pieces of `text`; a pre-tokenizer re-splits them and may rewrite the text.
struct Piece {
  uint32_t begin, end;
  bool at_text_start;  // starts at offset 0 of the original input (Metaspace prepend_scheme first)
};
struct PieceList {
  std::string text;
  std::vector<Piece> pieces;
};
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // `scratch` is a reusable buffer; the result is left in `list`.
  virtual void pre_tokenize(PieceList& list, PieceList& scratch) const = 0;
};
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& file,
                                                  const std::string& where);
// Splits a piece by the matches (relative to its start) the way NormalizedString::split does.
void split_piece(const Piece& piece, const std::vector<Match>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out);
// GPT-2's byte -> printable character table (ByteLevel), as UTF-8 strings, and its inverse.
const std::string& byte_level_char(unsigned char byte);
int byte_level_byte(char32_t cp);  // -1 when cp is not in the table

// ---- BPE model (tokenizer_bpe.cpp) ----
struct TransparentHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, TransparentHash, std::equal_to<>>;

class BpeModel {
 public:
  BpeModel(const json& model, const std::string& file);
  // Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  const Vocab& vocab() const { return vocab_; }

 private:
  struct MergeEntry {
    uint64_t pair;  // left id << 32 | right id; ~0 marks an empty slot
    uint32_t rank;
    int32_t merged_id;
  };
  const MergeEntry* find_merge(int32_t left, int32_t right) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::vector<MergeEntry> merges_;  // open addressing, power-of-two size
  uint64_t merge_mask_ = 0;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_, end_of_word_suffix_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  int32_t byte_fallback_ids_[256];  // -1 where <0xXX> is not in the vocabulary

  // word -> ids; words are short and repeat, so most words of a text are found here.
  static constexpr size_t kCacheCapacity = 1 << 17;
  static constexpr size_t kCacheMaxWordBytes = 128;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, TransparentHash, std::equal_to<>>
      cache_;
};

// ---- Decoders (tokenizer_decode.cpp) ----
// The byte a ByteFallback token "<0xXX>" names, or -1 for any other token.
int byte_fallback_value(std::string_view token);
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> parse_decoder(const json& j, const std::string& file,
                                       const std::string& where);

// ---- The whole tokenizer (tokenizer.cpp, tokenizer_added.cpp) ----
struct AddedToken {
  std::string content;
  int32_t id;
  bool special, lstrip, rstrip, single_word, normalized;
};

// Finds added tokens in text: leftmost-longest matches, as the aho-corasick automaton of
// `tokenizers` (MatchKind::LeftmostLongest), then single_word/lstrip/rstrip as AddedVocabulary.
class AddedTokenMatcher {
 public:
  void build(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns);
  // Segments covering `text`: the added token's id, or -1 for plain text. `tokens` must outlive
  // the matcher.
  struct Segment {
    size_t begin, end;
    int token;
  };
  void split(std::string_view text, std::vector<Segment>& out) const;
  bool empty() const { return nodes_.size() <= 1; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t token = -1;
  };
  std::vector<Node> nodes_;
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
};

struct TokenizerImpl {
  std::string file;  // tokenizer.json, for error messages
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  Vocab added_by_content;
  std::vector<std::string> id_to_token;  // model and added tokens
  std::vector<uint8_t> id_known, id_special;
  std::vector<int32_t> prefix_ids, suffix_ids;  // added around the text with special tokens
  std::optional<int32_t> bos_id, eos_id;

  void encode_plain(std::string_view text, bool at_text_start, std::vector<int32_t>& out) const;
};

}  // namespace marlin::tokenizer_detail
