// Validation of a safetensors header, shared by the memory-mapped and in-memory readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "marlin/safetensors.h"

namespace marlin::io {

// The HF library's limit: a longer header is refused before it is parsed.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsHeader {
  uint64_t header_size = 0;  // value of the 8-byte little-endian prefix
  uint64_t data_start = 0;   // 8 + header_size: where the data region begins in the file
  std::map<std::string, SafetensorsTensorInfo> tensors;
  SafetensorsMetadata metadata;
};

// A tensor name in quotes for error messages, cut short when it is very long.
std::string quote_name(const std::string& name);

// Checks everything about the file's layout: the prefix, the JSON, each entry's dtype, shape and
// offsets, and that the tensors tile the data region exactly (no overlap, no gap, no tail).
// Throws marlin::Error naming `label` (the file) and the offending tensor or field.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size,
                                           const std::string& label);

}  // namespace marlin::io
