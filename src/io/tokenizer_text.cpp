// UTF-8 helpers and the PCRE2 regex wrapper of the tokenizer. Patterns of tokenizer.json are
// written for Oniguruma (the `tokenizers` library's engine); the wrapper keeps its meaning of \s.
#include <pcre2.h>
#include <utf8proc.h>

#include <cctype>
#include <optional>

#include "marlin/error.h"
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {

void fail_file(const std::string& file, const std::string& where, const std::string& message) {
  fail("tokenizer", file, where.empty() ? "" : " (" + where + ")", ": ", message);
}

char32_t utf8_next(std::string_view s, size_t& pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t n = utf8_length(p[0]);
  char32_t cp = n == 1 ? p[0] : n == 2 ? p[0] & 0x1F : n == 3 ? p[0] & 0x0F : p[0] & 0x07;
  for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (p[i] & 0x3F);
  pos += n;
  return cp;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Length of the well-formed sequence at s[pos], or 0 with `valid_prefix` set to the length of its
// longest prefix that could still start a well-formed sequence (Unicode's "maximal subpart").
size_t well_formed_length(std::string_view s, size_t pos, size_t& valid_prefix) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned char b0 = p[pos];
  valid_prefix = 1;
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t i = 1; i < need; ++i) {
    if (pos + i >= n) return 0;
    const unsigned char b = p[pos + i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return 0;
    valid_prefix = i + 1;
  }
  return need;
}

}  // namespace

bool utf8_is_valid(std::string_view s) {
  size_t pos = 0, prefix = 0;
  while (pos < s.size()) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t len = well_formed_length(s, pos, prefix);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

std::string utf8_make_valid(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0, prefix = 0;
  while (pos < bytes.size()) {
    const size_t len = well_formed_length(bytes, pos, prefix);
    if (len > 0) {
      out.append(bytes.substr(pos, len));
      pos += len;
    } else {
      out += "\xEF\xBF\xBD";
      pos += prefix;
    }
  }
  return out;
}

bool is_unicode_whitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool is_word_char(char32_t cp) {
  if (cp < 0x80)
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  if (cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9)) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

namespace {

// Oniguruma's \s is Unicode White_Space; PCRE2's (with UCP) lacks U+0085. Spell it out.
constexpr const char* kWhitespaceClass =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

std::string onig_to_pcre2(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhitespaceClass) : "[" + std::string(kWhitespaceClass) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhitespaceClass) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& file) {
  const std::string translated = onig_to_pcre2(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), PCRE2_UTF | PCRE2_UCP, &error_code,
                                   &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    fail_file(file, "", "cannot compile regex '" + pattern + "': " +
                            reinterpret_cast<const char*>(message) + " at offset " +
                            std::to_string(error_offset));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<Match>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  std::optional<size_t> last_match_end;
  while (offset <= text.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), offset, 0, data, nullptr)
                        : pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                                      data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(data);
      fail("tokenizer", "regex match failed with PCRE2 error ", rc);
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin == end) {
      // Like Oniguruma's iterator: no empty match right after the previous match; step one char.
      if (!(last_match_end && *last_match_end == end)) out.push_back({begin, end});
      last_match_end = end;
      if (end >= text.size()) break;
      offset = end + utf8_length(static_cast<unsigned char>(text[end]));
    } else {
      out.push_back({begin, end});
      last_match_end = end;
      offset = end;
    }
  }
  pcre2_match_data_free(data);
}

std::string pattern_to_regex(const json& pattern, const std::string& file,
                             const std::string& where) {
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string())
    return pattern["Regex"].get<std::string>();
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    std::string escaped;
    for (const char c : pattern["String"].get<std::string>()) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x80 && !std::isalnum(u)) escaped += '\\';
      escaped += c;
    }
    return escaped;
  }
  fail_file(file, where, "pattern must be {\"String\": ...} or {\"Regex\": ...}, got " +
                             pattern.dump());
}

Replacer::Replacer(const json& j, const std::string& file, const std::string& where) {
  if (!j.contains("content") || !j["content"].is_string())
    fail_file(file, where, "Replace needs a string \"content\"");
  content_ = j["content"].get<std::string>();
  const json& pattern = j.value("pattern", json());
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string())
    literal_ = pattern["String"].get<std::string>();
  else
    regex_ = std::make_unique<Regex>(pattern_to_regex(pattern, file, where + ".pattern"), file);
  if (literal_ && literal_->empty()) fail_file(file, where, "Replace with an empty pattern");
}

void Replacer::replace_all(std::string& text) const {
  std::vector<Match> matches;
  if (literal_) {  // same matches as the escaped regex, without the regex engine
    for (size_t pos = text.find(*literal_); pos != std::string::npos;
         pos = text.find(*literal_, pos + literal_->size()))
      matches.push_back({pos, pos + literal_->size()});
  } else {
    regex_->find_all(text, matches);
  }
  if (matches.empty()) return;
  std::string out;
  out.reserve(text.size() + matches.size() * content_.size());
  size_t last = 0;
  for (const Match& m : matches) {
    out.append(text, last, m.begin - last).append(content_);
    last = m.end;
  }
  out.append(text, last, std::string::npos);
  text.swap(out);
}

}  // namespace marlin::tokenizer_detail
