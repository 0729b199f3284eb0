// Each pre-tokenizer (every Split behaviour, inverted or not, ByteLevel, Metaspace, ...) and each
// normalizer on its own, against the `tokenizers` library's output in expected_components.json.
#include <gtest/gtest.h>

#include <fstream>

#include "io/tokenizer_internal.h"

namespace marlin::tokenizer_detail {
namespace {

json load_components() {
  std::ifstream in(MARLIN_TEST_FIXTURES "/tokenizers/expected_components.json");
  return json::parse(in);
}

TEST(TokenizerComponents, PreTokenizersSplitLikeTokenizersLibrary) {
  const json expected = load_components();
  ASSERT_GE(expected["pre_tokenizers"].size(), 20u);
  for (const json& entry : expected["pre_tokenizers"]) {
    const auto pre = parse_pre_tokenizer(entry["pre_tokenizer"], "test", "pre_tokenizer");
    ASSERT_NE(pre, nullptr);
    for (const json& c : entry["cases"]) {
      const std::string text = c["text"];
      PieceList list{text, {}}, scratch;
      if (!text.empty()) list.pieces.push_back({0, static_cast<uint32_t>(text.size()), true});
      pre->pre_tokenize(list, scratch);
      std::vector<std::string> pieces;
      for (const Piece& p : list.pieces) pieces.push_back(list.text.substr(p.begin, p.end - p.begin));
      EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>())
          << entry["pre_tokenizer"].dump() << " on [" << text << "]";
    }
  }
}

TEST(TokenizerComponents, NormalizersMatchTokenizersLibrary) {
  const json expected = load_components();
  ASSERT_GE(expected["normalizers"].size(), 10u);
  for (const json& entry : expected["normalizers"]) {
    const auto normalizer = parse_normalizer(entry["normalizer"], "test", "normalizer");
    ASSERT_NE(normalizer, nullptr);
    for (const json& c : entry["cases"]) {
      std::string text = c["text"];
      normalizer->normalize(text);
      EXPECT_EQ(text, c["normalized"].get<std::string>())
          << entry["normalizer"].dump() << " on [" << c["text"] << "]";
    }
  }
}

TEST(TokenizerComponents, Utf8RepairReplacesEachMaximalIllFormedSubsequence) {
  // Every prefix of a 4-byte character, cut anywhere, gives valid UTF-8 with U+FFFD for the cut.
  const std::string emoji = "\xF0\x9F\x98\x80";
  for (size_t cut = 1; cut < emoji.size(); ++cut) {
    std::string broken = "a";
    broken.append(emoji, 0, cut).push_back('b');
    const std::string repaired = utf8_make_valid(broken);
    EXPECT_TRUE(utf8_is_valid(repaired));
    EXPECT_EQ(repaired, "a\xEF\xBF\xBD" "b");
  }
  EXPECT_FALSE(utf8_is_valid("\xED\xA0\x80"));  // a surrogate
  EXPECT_FALSE(utf8_is_valid("\xC0\xAF"));      // overlong
  EXPECT_TRUE(utf8_is_valid(emoji));
}

}  // namespace
}  // namespace marlin::tokenizer_detail
