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

}  // namespace marlin
