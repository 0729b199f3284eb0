// Pre-tokenizers of tokenizer.json: Split (regex, five behaviours, invert), ByteLevel, Metaspace,
// Digits, Whitespace, WhitespaceSplit, Punctuation and Sequence. They cut each piece of text into
// the words that the BPE model encodes one by one.
#include <algorithm>
#include <array>

#include "marlin/error.h"
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the others to U+0100+n.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> code_point_to_byte;  // all mapped code points are below 0x144
  ByteLevelTable() {
    code_point_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      utf8_append(byte_to_utf8[b], cp);
      code_point_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

SplitBehavior parse_behavior(const json& j, const std::string& file, const std::string& where) {
  const std::string name = j.is_string() ? j.get<std::string>() : j.dump();
  if (name == "Removed") return SplitBehavior::removed;
  if (name == "Isolated") return SplitBehavior::isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (name == "Contiguous") return SplitBehavior::contiguous;
  fail_file(file, where, "unknown split behavior " + name +
                             " (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const std::string& pattern, SplitBehavior behavior, bool invert,
                    const std::string& file)
      : regex_(pattern, file), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(PieceList& list, PieceList& scratch) const override {
    scratch.pieces.clear();
    std::vector<Match> matches;
    for (const Piece& piece : list.pieces) {
      matches.clear();
      regex_.find_all(std::string_view(list.text).substr(piece.begin, piece.end - piece.begin),
                      matches);
      split_piece(piece, matches, behavior_, invert_, scratch.pieces);
    }
    list.pieces.swap(scratch.pieces);
  }

 private:
  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex, const std::string& file)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, file);
  }
  void pre_tokenize(PieceList& list, PieceList& scratch) const override {
    const auto& table = byte_level_table().byte_to_utf8;
    scratch.text.clear();
    scratch.pieces.clear();
    std::string prefixed;
    std::vector<Match> matches;
    std::vector<Piece> words;
    for (const Piece& piece : list.pieces) {
      std::string_view content =
          std::string_view(list.text).substr(piece.begin, piece.end - piece.begin);
      if (add_prefix_space_ && (content.empty() || content.front() != ' ')) {
        prefixed.clear();
        prefixed.push_back(' ');
        prefixed.append(content);
        content = prefixed;
      }
      words.clear();
      if (regex_) {
        matches.clear();
        regex_->find_all(content, matches);
        split_piece({0, static_cast<uint32_t>(content.size()), piece.at_text_start},
                    matches, SplitBehavior::isolated, false, words);
      } else {
        words.push_back({0, static_cast<uint32_t>(content.size()), piece.at_text_start});
      }
      for (const Piece& word : words) {
        const auto begin = static_cast<uint32_t>(scratch.text.size());
        for (uint32_t i = word.begin; i < word.end; ++i)
          scratch.text += table[static_cast<unsigned char>(content[i])];
        scratch.pieces.push_back({begin, static_cast<uint32_t>(scratch.text.size()),
                                  word.at_text_start});
      }
    }
    list.text.swap(scratch.text);
    list.pieces.swap(scratch.pieces);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { always, first, never };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(PieceList& list, PieceList& scratch) const override {
    scratch.text.clear();
    scratch.pieces.clear();
    for (const Piece& piece : list.pieces) {
      const std::string_view content =
          std::string_view(list.text).substr(piece.begin, piece.end - piece.begin);
      const auto begin = static_cast<uint32_t>(scratch.text.size());
      const bool starts_with_replacement =
          content.substr(0, replacement_.size()) == replacement_ ||
          (!content.empty() && content.front() == ' ');  // the space becomes the replacement
      if (!starts_with_replacement && (scheme_ == PrependScheme::always ||
                                       (scheme_ == PrependScheme::first && piece.at_text_start)))
        scratch.text += replacement_;
      for (const char c : content) {
        if (c == ' ')
          scratch.text += replacement_;
        else
          scratch.text += c;
      }
      const auto end = static_cast<uint32_t>(scratch.text.size());
      if (!split_) {
        scratch.pieces.push_back({begin, end, piece.at_text_start});
        continue;
      }
      // MergedWithNext on every replacement: each word starts at a replacement.
      uint32_t word_begin = begin;
      for (size_t pos = scratch.text.find(replacement_, begin); pos != std::string::npos;
           pos = scratch.text.find(replacement_, pos + replacement_.size())) {
        if (pos > word_begin)
          scratch.pieces.push_back({word_begin, static_cast<uint32_t>(pos),
                                    piece.at_text_start && word_begin == begin});
        word_begin = static_cast<uint32_t>(pos);
      }
      if (end > word_begin)
        scratch.pieces.push_back({word_begin, end, piece.at_text_start && word_begin == begin});
    }
    list.text.swap(scratch.text);
    list.pieces.swap(scratch.pieces);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(PieceList& list, PieceList& scratch) const override {
    for (const auto& step : steps_) step->pre_tokenize(list, scratch);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

const std::string& byte_level_char(unsigned char byte) {
  return byte_level_table().byte_to_utf8[byte];
}

int byte_level_byte(char32_t cp) {
  const auto& table = byte_level_table().code_point_to_byte;
  return cp < table.size() ? table[cp] : -1;
}

void split_piece(const Piece& piece, const std::vector<Match>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
  struct Span {
    uint32_t begin, end;
    bool is_match;
  };
  const uint32_t length = piece.end - piece.begin;
  if (length == 0) return;
  // The whole piece as alternating non-matches and matches (NormalizedString::split).
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  uint32_t previous = 0;
  for (const Match& m : matches) {
    const auto b = static_cast<uint32_t>(m.begin), e = static_cast<uint32_t>(m.end);
    if (previous != b) spans.push_back({previous, b, invert});
    spans.push_back({b, e, !invert});
    previous = e;
  }
  if (previous != length) spans.push_back({previous, length, invert});

  std::vector<Span> kept;  // is_match now means "drop"
  kept.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const Span& s : spans) kept.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::removed:
      kept = spans;
      break;
    case SplitBehavior::contiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_previous:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty())
          kept.back().begin = it->begin;
        else
          kept.push_back({it->begin, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Span& s : kept)
    if (!s.is_match && s.end > s.begin)
      out.push_back({piece.begin + s.begin, piece.begin + s.end, piece.at_text_start && s.begin == 0});
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& file,
                                                  const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail_file(file, where, "a pre_tokenizer must be an object with a \"type\"");
  const std::string type = j["type"].get<std::string>();
  if (type == "Split") {
    const std::string pattern = pattern_to_regex(j.value("pattern", json()), file, where + ".pattern");
    return std::make_unique<SplitPreTokenizer>(
        pattern, parse_behavior(j.value("behavior", json()), file, where + ".behavior"),
        j.value("invert", false), file);
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(j.value("add_prefix_space", true),
                                                   j.value("use_regex", true), file);
  if (type == "Metaspace") {
    const std::string replacement = j.value("replacement", std::string("\xE2\x96\x81"));
    PrependScheme scheme = j.value("add_prefix_space", true) ? PrependScheme::always
                                                             : PrependScheme::never;
    if (j.contains("prepend_scheme")) {
      const std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always") scheme = PrependScheme::always;
      else if (s == "first") scheme = PrependScheme::first;
      else if (s == "never") scheme = PrependScheme::never;
      else fail_file(file, where, "unknown Metaspace prepend_scheme \"" + s + "\"");
    }
    if (replacement.empty()) fail_file(file, where, "Metaspace with an empty replacement");
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, j.value("split", true));
  }
  if (type == "Digits")
    return std::make_unique<SplitPreTokenizer>(
        j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)", SplitBehavior::isolated,
        false, file);
  if (type == "Whitespace")
    // Rust's Unicode \w (PCRE2's lacks the combining marks): \w+|[^\w\s]+
    return std::make_unique<SplitPreTokenizer>(
        R"([\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\x{200C}\x{200D}]+|[^\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\x{200C}\x{200D}\s]+)",
        SplitBehavior::removed, true, file);
  if (type == "WhitespaceSplit")
    return std::make_unique<SplitPreTokenizer>(R"(\s)", SplitBehavior::removed, false, file);
  if (type == "Punctuation")
    return std::make_unique<SplitPreTokenizer>(
        R"([\p{P}!-/:-@\[-`{-~])",
        parse_behavior(j.value("behavior", json("Isolated")), file, where + ".behavior"), false,
        file);
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      fail_file(file, where, "Sequence needs an array \"pretokenizers\"");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < j["pretokenizers"].size(); ++i) {
      auto step = parse_pre_tokenizer(j["pretokenizers"][i], file,
                                      where + ".pretokenizers[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  fail_file(file, where,
            "unsupported pre_tokenizer type \"" + type +
                "\" (supported: Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, "
                "Punctuation, Sequence)");
}

}  // namespace marlin::tokenizer_detail
