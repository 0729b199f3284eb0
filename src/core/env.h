// Process-wide switches read from the environment (MARLIN_CUDA_GRAPH, MARLIN_PDL and the
// measurement switches of docs/PERFORMANCE.md).
#pragma once

#include <cstdlib>
#include <cstring>

namespace marlin {

// Whether the environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// The integer value of `name`, or `fallback` when it is unset or not a whole number.
inline long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return *end == '\0' ? n : fallback;
}

}  // namespace marlin
