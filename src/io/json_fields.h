// Typed, error-naming access to the keys of one JSON object of a config file: every failure says
// which file, which key, what was expected and what was found.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace marlin::io {

std::string read_text_file(const std::string& path, std::string_view op);

class JsonFields {
 public:
  // `op` heads error messages; `prefix` names the enclosing object ("rope_scaling.").
  JsonFields(const nlohmann::json& object, std::string source, std::string_view op,
             std::string prefix = "");

  // True when the key is present and not null (HF writes null for "not set").
  bool has(std::string_view key) const;
  // The first of several spellings that is set, or nullptr.
  const char* first_present(std::initializer_list<const char*> keys) const;
  const nlohmann::json& at(std::string_view key) const;

  int64_t required_int(std::string_view key) const;
  int64_t required_positive(std::string_view key) const;
  std::optional<int64_t> optional_int(std::string_view key) const;
  int64_t int_or(std::string_view key, int64_t fallback) const;
  double required_number(std::string_view key) const;
  double number_or(std::string_view key, double fallback) const;
  std::optional<double> optional_number(std::string_view key) const;
  bool bool_or(std::string_view key, bool fallback) const;
  std::optional<bool> optional_bool(std::string_view key) const;
  std::string required_string(std::string_view key) const;
  std::optional<std::string> optional_string(std::string_view key) const;
  std::vector<int64_t> int_list(std::string_view key) const;         // absent: empty
  std::vector<int64_t> int_or_int_list(std::string_view key) const;  // 5 or [5, 6]; absent: empty
  std::vector<std::string> string_list(std::string_view key) const;  // absent: empty

  [[noreturn]] void fail_key(std::string_view key, const std::string& message) const;
  const std::string& source() const { return source_; }
  std::string_view op() const { return op_; }

 private:
  int64_t to_int(std::string_view key, const nlohmann::json& value) const;
  const nlohmann::json& object_;
  std::string source_;
  std::string_view op_;
  std::string prefix_;
};

}  // namespace marlin::io
