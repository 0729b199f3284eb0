// Typed JSON field access for config files (see json_fields.h).
#include "io/json_fields.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "marlin/error.h"

namespace marlin::io {

std::string read_text_file(const std::string& path, std::string_view op) {
  std::ifstream in(path, std::ios::binary);
  MARLIN_CHECK(in.good(), op, path, ": cannot open the file");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

JsonFields::JsonFields(const nlohmann::json& object, std::string source, std::string_view op,
                       std::string prefix)
    : object_(object), source_(std::move(source)), op_(op), prefix_(std::move(prefix)) {
  MARLIN_CHECK(object_.is_object(), op_, source_, ": ",
               prefix_.empty() ? std::string("the file")
                               : "key \"" + prefix_.substr(0, prefix_.size() - 1) + "\"",
               " must be a JSON object, got ", object_.type_name());
}

void JsonFields::fail_key(std::string_view key, const std::string& message) const {
  fail(op_, source_, ": key \"", prefix_, key, "\": ", message);
}

bool JsonFields::has(std::string_view key) const {
  const auto it = object_.find(key);
  return it != object_.end() && !it->is_null();
}

const char* JsonFields::first_present(std::initializer_list<const char*> keys) const {
  for (const char* key : keys)
    if (has(key)) return key;
  return nullptr;
}

const nlohmann::json& JsonFields::at(std::string_view key) const {
  const auto it = object_.find(key);
  if (it == object_.end()) fail_key(key, "is required but missing");
  if (it->is_null()) fail_key(key, "is required but null");
  return *it;
}

int64_t JsonFields::to_int(std::string_view key, const nlohmann::json& value) const {
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail_key(key, "integer " + value.dump() + " is out of range");
    return value.get<int64_t>();
  }
  // Some writers store integers as 4096.0; accept those, refuse 1.5.
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e18)
      return static_cast<int64_t>(v);
  }
  fail_key(key, std::string("expected an integer, got ") + value.type_name() + " " + value.dump());
}

int64_t JsonFields::required_int(std::string_view key) const { return to_int(key, at(key)); }

int64_t JsonFields::required_positive(std::string_view key) const {
  const int64_t v = required_int(key);
  if (v <= 0) fail_key(key, "must be positive, got " + std::to_string(v));
  return v;
}

std::optional<int64_t> JsonFields::optional_int(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return to_int(key, at(key));
}

int64_t JsonFields::int_or(std::string_view key, int64_t fallback) const {
  return optional_int(key).value_or(fallback);
}

std::optional<double> JsonFields::optional_number(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  const auto& value = at(key);
  if (!value.is_number())
    fail_key(key, std::string("expected a number, got ") + value.type_name() + " " + value.dump());
  const double v = value.get<double>();
  if (!std::isfinite(v)) fail_key(key, "must be finite, got " + value.dump());
  return v;
}

double JsonFields::required_number(std::string_view key) const {
  at(key);  // reports missing or null
  return *optional_number(key);
}

double JsonFields::number_or(std::string_view key, double fallback) const {
  return optional_number(key).value_or(fallback);
}

std::optional<bool> JsonFields::optional_bool(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  const auto& value = at(key);
  if (!value.is_boolean())
    fail_key(key,
             std::string("expected true or false, got ") + value.type_name() + " " + value.dump());
  return value.get<bool>();
}

bool JsonFields::bool_or(std::string_view key, bool fallback) const {
  return optional_bool(key).value_or(fallback);
}

std::optional<std::string> JsonFields::optional_string(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  const auto& value = at(key);
  if (!value.is_string())
    fail_key(key, std::string("expected a string, got ") + value.type_name() + " " + value.dump());
  return value.get<std::string>();
}

std::string JsonFields::required_string(std::string_view key) const {
  at(key);
  return *optional_string(key);
}

std::vector<int64_t> JsonFields::int_list(std::string_view key) const {
  if (!has(key)) return {};
  const auto& value = at(key);
  if (!value.is_array())
    fail_key(key, std::string("expected a list of integers, got ") + value.type_name());
  std::vector<int64_t> out;
  for (const auto& item : value) out.push_back(to_int(key, item));
  return out;
}

std::vector<int64_t> JsonFields::int_or_int_list(std::string_view key) const {
  if (!has(key)) return {};
  if (at(key).is_array()) return int_list(key);
  return {to_int(key, at(key))};
}

std::vector<std::string> JsonFields::string_list(std::string_view key) const {
  if (!has(key)) return {};
  const auto& value = at(key);
  if (!value.is_array())
    fail_key(key, std::string("expected a list of strings, got ") + value.type_name());
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) fail_key(key, "expected a list of strings, found " + item.dump());
    out.push_back(item.get<std::string>());
  }
  return out;
}

}  // namespace marlin::io
