// Parsing of token-id lists for the subcommands that take them (generate, score, tokenize).
#include "token_ids.h"

#include "marlin/error.h"

namespace marlin::cli {

std::vector<int64_t> parse_token_ids(const char* op, const char* option, const std::string& list) {
  std::vector<int64_t> ids;
  std::string item;
  auto flush = [&] {
    if (item.empty()) return;
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || value < 0)
      fail(op, option, ": '", item, "' is not a token id (a non-negative integer)");
    ids.push_back(value);
    item.clear();
  };
  for (const char c : list) {
    if (c == ',' || c == ' ' || c == '\n' || c == '\t') {
      flush();
    } else {
      item += c;
    }
  }
  flush();
  return ids;
}

}  // namespace marlin::cli
