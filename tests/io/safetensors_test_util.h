// Helpers of the safetensors tests: scratch directories, tensors of random bytes, and raw files
// assembled from a header string (for the corpus of broken files).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "marlin/tensor.h"

namespace marlin::testing {

// A fresh directory under the system's temp dir, removed with everything in it at scope exit.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("marlin_io_test_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Random bytes of any dtype (bool: random 0/1), so a round trip that drops or moves a byte shows.
inline Tensor random_bytes_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 rng(seed);
  auto* bytes = static_cast<uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i)
    bytes[i] = static_cast<uint8_t>(dtype == DType::boolean ? rng() & 1 : rng() >> 56);
  return t;
}

// 8-byte little-endian length, `header`, then `data_bytes` bytes of a non-zero pattern.
inline std::vector<uint8_t> file_bytes(const std::string& header, size_t data_bytes,
                                       uint64_t declared_length = UINT64_MAX) {
  const uint64_t length = declared_length == UINT64_MAX ? header.size() : declared_length;
  std::vector<uint8_t> bytes(8 + header.size() + data_bytes);
  for (size_t i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(length >> (8 * i));
  for (size_t i = 0; i < header.size(); ++i) bytes[8 + i] = static_cast<uint8_t>(header[i]);
  for (size_t i = 0; i < data_bytes; ++i)
    bytes[8 + header.size() + i] = static_cast<uint8_t>(0x5a + i);
  return bytes;
}

}  // namespace marlin::testing
