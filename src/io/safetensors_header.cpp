// Parsing and full validation of safetensors headers. Nothing here trusts the file: every size,
// offset and product is checked before use, so a hostile header ends in marlin::Error.
#include "io/safetensors_header.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

namespace marlin {

namespace {

struct DTypeName {
  std::string_view name;
  DType dtype;
};
constexpr std::array<DTypeName, 12> kDTypeNames{{
    {"F64", DType::f64},
    {"F32", DType::f32},
    {"F16", DType::f16},
    {"BF16", DType::bf16},
    {"F8_E4M3", DType::fp8_e4m3},
    {"I64", DType::i64},
    {"I32", DType::i32},
    {"U32", DType::u32},
    {"I16", DType::i16},
    {"I8", DType::i8},
    {"U8", DType::u8},
    {"BOOL", DType::boolean},
}};

std::string supported_dtype_list() {
  std::string out;
  for (const auto& entry : kDTypeNames) out.append(out.empty() ? "" : ", ").append(entry.name);
  return out;
}

}  // namespace

std::optional<DType> safetensors_dtype_from_name(std::string_view name) {
  for (const auto& entry : kDTypeNames)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType dtype) {
  for (const auto& entry : kDTypeNames)
    if (entry.dtype == dtype) return entry.name;
  return "";
}

namespace io {
namespace {

constexpr std::string_view kOp = "safetensors";

// A JSON number that is a non-negative integer (the parser keeps integers exact up to 2^64-1).
bool as_unsigned(const nlohmann::json& value, uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

nlohmann::json parse_json_object(const uint8_t* begin, const uint8_t* end,
                                 const std::string& label) {
  // Top-level keys are tensor names: a duplicate would silently hide a tensor, so it is an error.
  // Valid headers nest three levels at most (object, entry, shape); deeper values are dropped
  // during parsing so that a hostile header cannot build a huge tree, and reported after.
  std::set<std::string> seen;
  std::string duplicate;
  bool too_deep = false;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::key && depth == 1 && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    if ((event == Event::object_start || event == Event::array_start) && depth >= 3) {
      too_deep = true;
      return false;
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(begin, end, callback);
  } catch (const nlohmann::json::exception& e) {
    fail(kOp, label, ": header is not valid JSON: ", e.what());
  }
  MARLIN_CHECK(header.is_object(), kOp, label, ": header must be a JSON object, got ",
               header.type_name());
  MARLIN_CHECK(duplicate.empty(), kOp, label, ": tensor ", quote_name(duplicate),
               " appears twice in the header");
  MARLIN_CHECK(!too_deep, kOp, label,
               ": header nests values deeper than a safetensors header can (tensor entries hold "
               "only dtype, shape and data_offsets)");
  return header;
}

SafetensorsMetadata parse_metadata(const nlohmann::json& value, const std::string& label) {
  MARLIN_CHECK(value.is_object(), kOp, label,
               ": \"__metadata__\" must be an object of strings, got ", value.type_name());
  SafetensorsMetadata metadata;
  for (const auto& [key, item] : value.items()) {
    MARLIN_CHECK(item.is_string(), kOp, label, ": \"__metadata__\" value of key ", quote_name(key),
                 " must be a string, got ", item.type_name());
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

SafetensorsTensorInfo parse_entry(const std::string& name, const nlohmann::json& entry,
                                  uint64_t data_size, const std::string& label) {
  const std::string where = label + ": tensor " + quote_name(name);
  MARLIN_CHECK(entry.is_object(), kOp, where, ": entry must be an object, got ", entry.type_name());
  for (const auto& [key, unused] : entry.items()) {
    (void)unused;
    MARLIN_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", kOp, where,
                 ": unknown field ", quote_name(key), " (expected dtype, shape, data_offsets)");
  }
  MARLIN_CHECK(entry.contains("dtype") && entry.contains("shape") && entry.contains("data_offsets"),
               kOp, where, ": entry needs the fields dtype, shape and data_offsets");

  SafetensorsTensorInfo info;
  const auto& dtype = entry["dtype"];
  MARLIN_CHECK(dtype.is_string(), kOp, where, ": dtype must be a string, got ", dtype.type_name());
  const auto parsed_dtype = safetensors_dtype_from_name(dtype.get<std::string>());
  MARLIN_CHECK(parsed_dtype.has_value(), kOp, where, ": unsupported dtype ",
               quote_name(dtype.get<std::string>()), " (supported: ", supported_dtype_list(), ")");
  info.dtype = *parsed_dtype;

  const auto& shape = entry["shape"];
  MARLIN_CHECK(shape.is_array(), kOp, where, ": shape must be an array, got ", shape.type_name());
  // The product of the non-zero extents times the element size must fit in int64, so that
  // strides and byte sizes of the tensor (even an empty one) never overflow.
  uint64_t span = dtype_size(info.dtype);
  bool empty = false;
  for (size_t d = 0; d < shape.size(); ++d) {
    uint64_t extent = 0;
    MARLIN_CHECK(as_unsigned(shape[d], extent), kOp, where, ": shape[", d,
                 "] must be a non-negative integer, got ", shape[d].dump());
    empty = empty || extent == 0;
    MARLIN_CHECK(extent <= static_cast<uint64_t>(INT64_MAX) &&
                     !__builtin_mul_overflow(span, extent == 0 ? 1 : extent, &span) &&
                     span <= static_cast<uint64_t>(INT64_MAX),
                 kOp, where, ": shape ", shape.dump(), " overflows 64-bit sizes");
    info.shape.push_back(static_cast<int64_t>(extent));
  }
  const uint64_t nbytes = empty ? 0 : span;

  const auto& offsets = entry["data_offsets"];
  MARLIN_CHECK(offsets.is_array() && offsets.size() == 2, kOp, where,
               ": data_offsets must be an array [begin, end], got ", offsets.dump());
  MARLIN_CHECK(as_unsigned(offsets[0], info.data_begin) && as_unsigned(offsets[1], info.data_end),
               kOp, where, ": data_offsets must be non-negative integers, got ", offsets.dump());
  MARLIN_CHECK(info.data_begin <= info.data_end, kOp, where, ": data_offsets ", offsets.dump(),
               " begin after they end");
  MARLIN_CHECK(info.data_end <= data_size, kOp, where, ": data_offsets ", offsets.dump(),
               " reach past the end of the data region (", data_size, " bytes; file truncated?)");
  MARLIN_CHECK(info.nbytes() == nbytes, kOp, where, ": data_offsets ", offsets.dump(), " hold ",
               info.nbytes(), " bytes but dtype ", dtype.get<std::string>(), " and shape ",
               shape.dump(), " need ", nbytes);
  return info;
}

// The tensors must tile [0, data_size) exactly, as the HF library requires: sorted by offset,
// each one starts where the previous ended, and the last ends at the end of the file.
void check_tiling(const std::map<std::string, SafetensorsTensorInfo>& tensors, uint64_t data_size,
                  const std::string& label) {
  std::vector<const std::pair<const std::string, SafetensorsTensorInfo>*> order;
  order.reserve(tensors.size());
  for (const auto& entry : tensors) order.push_back(&entry);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return std::pair(a->second.data_begin, a->second.data_end) <
           std::pair(b->second.data_begin, b->second.data_end);
  });
  uint64_t covered = 0;
  const std::string* previous = nullptr;
  for (const auto* entry : order) {
    const auto& info = entry->second;
    MARLIN_CHECK(info.data_begin >= covered, kOp, label, ": tensor ", quote_name(entry->first),
                 " (bytes ", info.data_begin, "..", info.data_end, ") overlaps tensor ",
                 quote_name(previous ? *previous : std::string()));
    MARLIN_CHECK(info.data_begin == covered, kOp, label, ": tensor ", quote_name(entry->first),
                 " starts at byte ", info.data_begin, " of the data region, leaving a gap of ",
                 info.data_begin - covered, " bytes after ",
                 previous ? "tensor " + quote_name(*previous) : std::string("the header"));
    covered = info.data_end;
    previous = &entry->first;
  }
  MARLIN_CHECK(covered == data_size, kOp, label, ": the data region has ", data_size,
               " bytes but the tensors cover only ", covered, " (", data_size - covered,
               " bytes after ",
               previous ? "tensor " + quote_name(*previous) : std::string("the header"),
               " belong to no tensor)");
}

}  // namespace

// Tensor names may hold anything JSON allows; quote them so that odd names stay readable.
std::string quote_name(const std::string& name) {
  return "\"" + (name.size() > 200 ? name.substr(0, 200) + "..." : name) + "\"";
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size,
                                           const std::string& label) {
  MARLIN_CHECK(size >= 8, kOp, label, ": file has ", size,
               " bytes, too short for the 8-byte header length (truncated?)");
  SafetensorsHeader header;
  for (int i = 7; i >= 0; --i) header.header_size = (header.header_size << 8) | bytes[i];
  MARLIN_CHECK(header.header_size <= kMaxSafetensorsHeaderBytes, kOp, label, ": header length ",
               header.header_size, " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes");
  MARLIN_CHECK(header.header_size <= size - 8, kOp, label, ": header length ", header.header_size,
               " reaches past the end of the file (", size, " bytes; truncated?)");
  header.data_start = 8 + header.header_size;
  const uint64_t data_size = size - header.data_start;

  const nlohmann::json json = parse_json_object(bytes + 8, bytes + header.data_start, label);
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      header.metadata = parse_metadata(entry, label);
      continue;
    }
    header.tensors.emplace(name, parse_entry(name, entry, data_size, label));
  }
  check_tiling(header.tensors, data_size, label);
  return header;
}

}  // namespace io
}  // namespace marlin
