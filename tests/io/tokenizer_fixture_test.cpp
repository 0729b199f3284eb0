// Our ids and decoded text against the Hugging Face `tokenizers` library's, for the tokenizers
// trained by tools/make_tokenizer_fixtures.py and the real Qwen3 and DeepSeek-V3 files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "marlin/tokenizer.h"

namespace marlin {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kFixtures = MARLIN_TEST_FIXTURES "/tokenizers";
const std::string kShared = MARLIN_SOURCE_DIR "/../shared/tokenizers";

std::string tokenizer_dir(const std::string& name) {
  const std::string own = kFixtures + "/" + name;
  return fs::exists(own + "/tokenizer.json") ? own : kShared + "/" + name;
}

json load_expected(const std::string& name) {
  std::ifstream in(kFixtures + "/expected_" + name + ".json");
  return json::parse(in);
}

bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!fs::exists(tokenizer_dir(GetParam()) + "/tokenizer.json"))
      GTEST_SKIP() << "no tokenizer files for " << GetParam() << " (shared/tokenizers absent)";
  }
};

TEST_P(TokenizerFixture, EncodeMatchesTokenizersLibrary) {
  const Tokenizer tok = Tokenizer::from_dir(tokenizer_dir(GetParam()));
  const json expected = load_expected(GetParam());
  int mismatches = 0;
  for (const json& c : expected["cases"]) {
    const std::string text = c["text"];
    const auto ids = tok.encode(text, false);
    const auto with_special = tok.encode(text, true);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "text: [" << text << "]";
    EXPECT_EQ(with_special, c["ids_special"].get<std::vector<int32_t>>()) << "text: [" << text << "]";
    mismatches += ids != c["ids"].get<std::vector<int32_t>>();
    if (mismatches > 10) FAIL() << "stopping after 10 mismatching texts";
  }
  for (const json& c : expected["invalid_utf8"]) {
    EXPECT_EQ(tok.encode(from_hex(c["hex"]), false), c["ids"].get<std::vector<int32_t>>())
        << "bytes: " << c["hex"];
  }
}

TEST_P(TokenizerFixture, DecodeMatchesTokenizersLibrary) {
  const Tokenizer tok = Tokenizer::from_dir(tokenizer_dir(GetParam()));
  const json expected = load_expected(GetParam());
  for (const json& c : expected["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto with_special = c["ids_special"].get<std::vector<int32_t>>();
    const std::string decoded = tok.decode(ids);
    EXPECT_EQ(decoded, c["decoded"].get<std::string>()) << "text: [" << c["text"] << "]";
    EXPECT_EQ(tok.decode(with_special, true), c["decoded_skip_special"].get<std::string>())
        << "text: [" << c["text"] << "]";
    if (c["lossless"].get<bool>()) {
      EXPECT_EQ(decoded, c["text"].get<std::string>());
    }
  }
}

TEST_P(TokenizerFixture, StreamingDecodeEqualsFullDecodeAndIsValidUtf8) {
  const Tokenizer tok = Tokenizer::from_dir(tokenizer_dir(GetParam()));
  const json expected = load_expected(GetParam());
  for (const bool skip_special : {false, true}) {
    for (const json& c : expected["cases"]) {
      const auto ids = c["ids_special"].get<std::vector<int32_t>>();
      StreamDecoder stream(tok, skip_special);
      std::string streamed;
      for (const int32_t id : ids) {
        const std::string piece = stream.step(id);
        ASSERT_TRUE(is_valid_utf8(piece)) << "text: [" << c["text"] << "]";
        streamed += piece;
      }
      streamed += stream.flush();
      EXPECT_EQ(streamed, tok.decode(ids, skip_special)) << "text: [" << c["text"] << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTokenizers, TokenizerFixture,
                         ::testing::Values("llama3_bpe", "sp_bpe", "sp_metaspace", "qwen3",
                                           "deepseek_v3"));

}  // namespace
}  // namespace marlin
