// Added (and special) tokens are found in the text before the model runs: a byte trie gives the
// leftmost-longest match, then single_word, lstrip and rstrip apply as in `tokenizers`'
// AddedVocabulary::find_matches.
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {
namespace {

// The character that ends text[0, end) (valid UTF-8).
char32_t last_char(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return utf8_next(text, start);
}

// Start of the run of whitespace that ends text[0, end).
size_t trailing_space_start(std::string_view text, size_t end) {
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t next = start;
    if (!is_unicode_whitespace(utf8_next(text, next))) break;
    end = start;
  }
  return end;
}

// End of the run of whitespace that starts at text[begin].
size_t leading_space_end(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    size_t next = begin;
    if (!is_unicode_whitespace(utf8_next(text, next))) break;
    begin = next;
  }
  return begin;
}

}  // namespace

void AddedTokenMatcher::build(const std::vector<AddedToken>& tokens,
                              const std::vector<std::string>& patterns) {
  nodes_.assign(1, Node{});
  tokens_.clear();
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& pattern = patterns[t];
    if (pattern.empty()) continue;
    int32_t node = 0;
    for (const char c : pattern) {
      const auto byte = static_cast<unsigned char>(c);
      auto& children = nodes_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1}));
      if (it != children.end() && it->first == byte) {
        node = it->second;
      } else {
        const auto child = static_cast<int32_t>(nodes_.size());
        children.insert(it, {byte, child});
        nodes_.emplace_back();
        node = child;
      }
    }
    // With two equal patterns the first one wins, as with aho-corasick's pattern order.
    if (nodes_[node].token < 0) {
      nodes_[node].token = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(&tokens[t]);
    }
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  const size_t n = text.size();
  size_t start_offset = 0;
  for (size_t pos = 0; pos < n;) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < n; ++i) {
      const auto& children = nodes_[node].children;
      const auto byte = static_cast<unsigned char>(text[i]);
      auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1}));
      if (it == children.end() || it->first != byte) break;
      node = it->second;
      if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = i + 1;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = best_end;
    pos = best_end;  // the automaton goes on after the match, whatever is done with it
    const AddedToken& token = *tokens_[best];
    if (token.single_word) {
      const bool space_before = start == 0 || !is_word_char(last_char(text, start));
      size_t after = stop;
      const bool space_after = stop == n || !is_word_char(utf8_next(text, after));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) start = std::max(trailing_space_start(text, start), start_offset);
    if (token.rstrip) stop = leading_space_end(text, stop);
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, static_cast<int>(token.id)});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back({start_offset, n, -1});
}

}  // namespace marlin::tokenizer_detail
