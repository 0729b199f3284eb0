// Decoders of tokenizer.json (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)
// and the streaming decoder, which holds text back while it ends in an incomplete character.
#include "marlin/error.h"
#include "marlin/tokenizer.h"
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t start = bytes.size();
      size_t pos = 0;
      bool all_mapped = true;
      while (pos < token.size()) {
        const int b = byte_level_byte(utf8_next(token, pos));
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes += static_cast<char>(b);
      }
      // A token outside the byte alphabet (an added token) contributes its own bytes.
      if (!all_mapped) bytes.resize(start), bytes += token;
    }
    tokens.assign(1, utf8_is_valid(bytes) ? std::move(bytes) : utf8_make_valid(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      for (size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && strip_first_)) out += ' ';
          pos += replacement_.size();
        } else {
          out += token[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const json& j, const std::string& file, const std::string& where)
      : replacer_(j, file, where) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) replacer_.replace_all(token);
  }

 private:
  Replacer replacer_;
};

}  // namespace

int byte_fallback_value(std::string_view token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  const int hi = hex(token[3]), lo = hex(token[4]);
  return hi >= 0 && lo >= 0 ? hi * 16 + lo : -1;
}

namespace {

// Runs of <0xXX> tokens become the bytes they name: one string when those bytes are valid UTF-8,
// else one U+FFFD per byte.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t byte_count = 0;
    auto flush = [&] {
      if (byte_count == 0) return;
      if (utf8_is_valid(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < byte_count; ++i) out.emplace_back(kReplacementChar);
      }
      bytes.clear();
      byte_count = 0;
    };
    for (std::string& token : tokens) {
      const int value = byte_fallback_value(token);
      if (value >= 0) {
        bytes += static_cast<char>(value);
        ++byte_count;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    const size_t n = content_.size();
    for (std::string& token : tokens) {
      size_t begin = 0, end = token.size();
      for (size_t i = 0; i < start_ && end - begin >= n && token.compare(begin, n, content_) == 0; ++i)
        begin += n;
      for (size_t i = 0; i < stop_ && end - begin >= n && token.compare(end - n, n, content_) == 0; ++i)
        end -= n;
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& j, const std::string& file,
                                       const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail_file(file, where, "a decoder must be an object with a \"type\"");
  const std::string type = j["type"].get<std::string>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip_first = j.value("add_prefix_space", true);
    if (j.contains("prepend_scheme")) strip_first = j["prepend_scheme"].get<std::string>() != "never";
    return std::make_unique<MetaspaceDecoder>(j.value("replacement", std::string("\xE2\x96\x81")),
                                              strip_first);
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j, file, where);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    const std::string content = j.value("content", std::string(" "));
    if (content.empty()) fail_file(file, where, "Strip with an empty content");
    return std::make_unique<StripDecoder>(content, j.value("start", size_t{0}), j.value("stop", size_t{0}));
  }
  if (type == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array())
      fail_file(file, where, "Sequence needs an array \"decoders\"");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < j["decoders"].size(); ++i) {
      auto step = parse_decoder(j["decoders"][i], file, where + ".decoders[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  fail_file(file, where,
            "unsupported decoder type \"" + type +
                "\" (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)");
}

}  // namespace marlin::tokenizer_detail

namespace marlin {

StreamDecoder::StreamDecoder(Tokenizer tokenizer, bool skip_special_tokens)
    : tokenizer_(std::move(tokenizer)), skip_special_tokens_(skip_special_tokens) {}

// The scheme of `tokenizers`' DecodeStream: decode the context tokens plus the new ones and emit
// what extends the context's text, unless it ends in U+FFFD (a character still incomplete). A
// byte token (<0xXX>) is held back too: the run it belongs to decodes as one string only if all
// its bytes are valid UTF-8, else as one U+FFFD per byte, so a later byte of the run can change
// what the earlier ones decode to (four <0x00> then <0xE4>: five U+FFFD, not four NULs first).
std::string StreamDecoder::step(int32_t id) {
  ids_.push_back(id);
  const std::optional<std::string> token = tokenizer_.id_to_token(id);
  if (token && tokenizer_detail::byte_fallback_value(*token) >= 0) return {};
  std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  if (text.size() <= prefix_.size() || text.ends_with(tokenizer_detail::kReplacementChar))
    return {};
  // The context tokens keep the decode of the prefix stable; should a decoder still change it,
  // emit from where the texts differ (on a character boundary) rather than repeat text.
  size_t common = 0;
  while (common < prefix_.size() && text[common] == prefix_[common]) ++common;
  while (common > 0 && common < text.size() && (static_cast<unsigned char>(text[common]) & 0xC0) == 0x80)
    --common;
  std::string new_text = text.substr(common);
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_index_ = ids_.size();
  prefix_ = tokenizer_.decode(ids_, skip_special_tokens_);
  return new_text;
}

std::string StreamDecoder::flush() {
  std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  std::string rest = text.size() > prefix_.size() ? text.substr(prefix_.size()) : std::string();
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return rest;
}

}  // namespace marlin
