// Token ids given on the command line: "1,2,3" or "1 2 3" (what `marlin tokenize` prints).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace marlin::cli {

// Non-negative integer ids; anything else is an error naming `op` and `option`. The caller
// checks the vocabulary range.
std::vector<int64_t> parse_token_ids(const char* op, const char* option, const std::string& list);

}  // namespace marlin::cli
