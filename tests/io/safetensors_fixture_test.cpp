// Cross-check with the Hugging Face `safetensors` library: tools/make_safetensors_fixture.py wrote
// tests/fixtures/safetensors/mixed.safetensors (every dtype, bf16 and F8_E4M3 from raw bytes, a
// scalar, an empty tensor, metadata) and the expected bytes and values. We must read exactly
// that, and our writer must reproduce the library's file byte for byte; a byte-identical file is
// one the library loads with identical values (the script checks its own file reads back).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "marlin/safetensors.h"

namespace marlin {
namespace {

const std::string kFixtureDir = std::string(MARLIN_TEST_FIXTURES) + "/safetensors";

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), {});
}

std::string hex_of(const Tensor& t) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) out.append({digits[p[i] >> 4], digits[p[i] & 15]});
  return out;
}

class SafetensorsFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(kFixtureDir + "/mixed_expected.json");
    ASSERT_TRUE(in.good()) << "run tools/make_safetensors_fixture.py";
    expected_ = nlohmann::json::parse(in);
  }
  nlohmann::json expected_;
};

TEST_F(SafetensorsFixture, ReadsThePythonFileExactly) {
  const SafetensorsFile file = SafetensorsFile::open(kFixtureDir + "/mixed.safetensors");
  EXPECT_EQ(file.metadata(), expected_["metadata"].get<SafetensorsMetadata>());
  const auto& tensors = expected_["tensors"];
  ASSERT_EQ(file.names().size(), tensors.size());
  for (const auto& [name, want] : tensors.items()) {
    SCOPED_TRACE(name);
    const Tensor t = file.tensor(name);
    EXPECT_EQ(safetensors_dtype_name(t.dtype()), want["dtype"].get<std::string>());
    EXPECT_EQ(t.shape(), want["shape"].get<Shape>());
    EXPECT_EQ(hex_of(t), want["hex"].get<std::string>());
    // Decoding through our dtype tables (bf16, E4M3 included) gives Python's values.
    const auto& values = want["values"];
    ASSERT_EQ(static_cast<int64_t>(values.size()), t.numel());
    if (t.numel() == 0) continue;
    const Tensor flat = t.view({t.numel()});
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (t.dtype() == DType::i64) {
        EXPECT_EQ(flat.data<int64_t>()[i], values[i].get<int64_t>());  // beyond double's 2^53
      } else {
        EXPECT_EQ(flat.item_as_double({i}), values[i].get<double>()) << "element " << i;
      }
    }
  }
}

TEST_F(SafetensorsFixture, WritesTheSameBytesAsThePythonLibrary) {
  const std::string path = kFixtureDir + "/mixed.safetensors";
  const SafetensorsFile file = SafetensorsFile::open(path);
  // Feed the tensors in reverse name order: the writer must impose the library's order itself.
  NamedTensors tensors;
  for (auto it = file.names().rbegin(); it != file.names().rend(); ++it)
    tensors.emplace_back(*it, file.tensor(*it).clone());
  EXPECT_EQ(serialize_safetensors(tensors, file.metadata()), read_bytes(path));
}

}  // namespace
}  // namespace marlin
