// Errors as exceptions that name the op and the offending sizes, dtypes or devices
// ("[dispatch_gemm_fp4] K=100 is not a multiple of group_size=32").
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace marlin {

class Error : public std::runtime_error {
 public:
  Error(std::string_view op, const std::string& message)
      : std::runtime_error(format(op, message)), op_(op) {}
  const std::string& op() const { return op_; }

 private:
  static std::string format(std::string_view op, const std::string& message) {
    std::string out;
    out.reserve(op.size() + message.size() + 3);
    out.append("[").append(op).append("] ").append(message);
    return out;
  }
  std::string op_;
};

namespace detail {
template <typename T>
void stream_value(std::ostringstream& os, const T& v) {
  os << v;
}
template <typename T>
void stream_value(std::ostringstream& os, const std::vector<T>& v) {
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (stream_value(os, args), ...);
  return os.str();
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(std::string_view op, const Args&... args) {
  throw Error(op, detail::concat(args...));
}

}  // namespace marlin

// MARLIN_CHECK(cond, "op", "message parts", value, ...): throws marlin::Error when cond is false.
#define MARLIN_CHECK(cond, op, ...)                              \
  do {                                                           \
    if (!(cond)) ::marlin::fail(op, __VA_ARGS__);                \
  } while (0)
