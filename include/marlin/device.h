// Where a tensor lives: the CPU or one CUDA device; and what this build and machine offer.
#pragma once

#include <cstdint>
#include <string>

namespace marlin {

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static constexpr Device cpu() { return Device{Kind::cpu, 0}; }
  static constexpr Device cuda(int index = 0) { return Device{Kind::cuda, index}; }
  // "cpu", "cuda", "cuda:1"; anything else is an error naming the text.
  static Device parse(const std::string& text);

  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  std::string str() const;
  friend bool operator==(const Device& a, const Device& b) {
    return a.kind == b.kind && (a.kind == Kind::cpu || a.index == b.index);
  }
};

// True when the library was compiled with the CUDA backend.
bool cuda_compiled();
// Number of usable CUDA devices (0 when none is present or the backend is not compiled).
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace marlin
