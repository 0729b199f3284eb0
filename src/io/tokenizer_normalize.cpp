// Normalizers of tokenizer.json: Unicode forms (utf8proc), Prepend, Replace, Lowercase, Strip,
// StripAccents and Sequence. Each rewrites one piece of text between added tokens.
#include <utf8proc.h>

#include <cstdlib>

#include "marlin/error.h"
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {
namespace {

bool is_ascii(std::string_view s) {
  for (const char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void normalize(std::string& text) const override {
    if (is_ascii(text)) return;  // every normalization form leaves ASCII unchanged
    utf8proc_uint8_t* result = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &result,
                     static_cast<utf8proc_option_t>(options_));
    if (n < 0) fail("tokenizer", "utf8proc normalization failed: ", utf8proc_errmsg(n));
    text.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
  }

 private:
  int options_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const json& j, const std::string& file, const std::string& where)
      : replacer_(j, file, where) {}
  void normalize(std::string& text) const override { replacer_.replace_all(text); }

 private:
  Replacer replacer_;
};

// Applies a code point map (lowercase, accent stripping) character by character.
template <typename Fn>
void map_code_points(std::string& text, Fn&& fn) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) fn(utf8_next(text, pos), out);
  text.swap(out);
}

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    if (is_ascii(text)) {
      for (char& c : text)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      return;
    }
    map_code_points(text, [](char32_t cp, std::string& out) {
      utf8_append(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    });
  }
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    map_code_points(text, [](char32_t cp, std::string& out) {
      if (utf8proc_category(static_cast<utf8proc_int32_t>(cp)) != UTF8PROC_CATEGORY_MN)
        utf8_append(out, cp);
    });
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!is_unicode_whitespace(utf8_next(text, next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t next = start;
        if (!is_unicode_whitespace(utf8_next(text, next))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& file,
                                             const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail_file(file, where, "a normalizer must be an object with a \"type\"");
  const std::string type = j["type"].get<std::string>();
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (type == "NFKC")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  if (type == "NFKD")
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE |
                                               UTF8PROC_COMPAT);
  if (type == "Prepend") {
    if (!j.contains("prepend") || !j["prepend"].is_string())
      fail_file(file, where, "Prepend needs a string \"prepend\"");
    return std::make_unique<PrependNormalizer>(j["prepend"].get<std::string>());
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j, file, where);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      fail_file(file, where, "Sequence needs an array \"normalizers\"");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < j["normalizers"].size(); ++i) {
      auto step = parse_normalizer(j["normalizers"][i], file,
                                   where + ".normalizers[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  fail_file(file, where,
            "unsupported normalizer type \"" + type +
                "\" (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Lowercase, Strip, "
                "StripAccents, Sequence)");
}

}  // namespace marlin::tokenizer_detail
