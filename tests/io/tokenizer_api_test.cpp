// The Tokenizer's lookups and its errors: a bad or unsupported file names the file and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "marlin/error.h"
#include "marlin/tokenizer.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFixtures = MARLIN_TEST_FIXTURES "/tokenizers";

json read(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("marlin_tokenizer_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
             "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& content) const {
    const std::string file = (path_ / name).string();
    std::ofstream(file, std::ios::binary) << content;
    return file;
  }
  std::string dir() const { return path_.string(); }

 private:
  fs::path path_;
};

// Loading `content` as tokenizer.json fails with a message naming the file and `needle`.
void expect_load_error(const std::string& content, const std::string& needle) {
  TempDir tmp;
  const std::string file = tmp.write("tokenizer.json", content);
  try {
    Tokenizer::from_files(file);
    ADD_FAILURE() << "loading did not fail; expected an error about " << needle;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << message;
  }
}

json valid_tokenizer() { return read(kFixtures + "/llama3_bpe/tokenizer.json"); }

TEST(TokenizerErrors, MissingFileNamesTheFile) {
  TempDir tmp;
  try {
    Tokenizer::from_dir(tmp.dir());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp.dir() + "/tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST(TokenizerErrors, BrokenJson) {
  expect_load_error("{\"model\": {\"type\": \"BPE\", ", "invalid JSON");
  expect_load_error("", "invalid JSON");
  expect_load_error("[1, 2]", "top level");
}

TEST(TokenizerErrors, UnsupportedModelType) {
  json j = valid_tokenizer();
  j["model"]["type"] = "WordPiece";
  expect_load_error(j.dump(), "unsupported model type \"WordPiece\"");
}

TEST(TokenizerErrors, UnsupportedPipelineSteps) {
  json j = valid_tokenizer();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_load_error(j.dump(), "unsupported pre_tokenizer type \"BertPreTokenizer\"");
  j = valid_tokenizer();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  expect_load_error(j.dump(), "unsupported normalizer type \"Precompiled\"");
  j = valid_tokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_load_error(j.dump(), "unsupported decoder type \"WordPiece\"");
}

TEST(TokenizerErrors, BadModelContent) {
  json j = valid_tokenizer();
  j["model"]["merges"][0] = json::array({"not-a-token", "zzz"});
  expect_load_error(j.dump(), "is not in the vocabulary");
  j = valid_tokenizer();
  j["model"]["merges"][0] = "three part merge";
  expect_load_error(j.dump(), "model.merges[0]");
  j = valid_tokenizer();
  j["model"]["vocab"] = json::array();
  expect_load_error(j.dump(), "vocab");
  j = valid_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_load_error(j.dump(), "cannot compile regex");
  j = valid_tokenizer();
  j["added_tokens"][0]["id"] = "seven";
  expect_load_error(j.dump(), "added_tokens[0]");
}

TEST(TokenizerErrors, ConfigNamingAnUnknownTokenNamesTheConfigFile) {
  TempDir tmp;
  const std::string tokenizer = tmp.write("tokenizer.json", valid_tokenizer().dump());
  const std::string config = tmp.write("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  try {
    Tokenizer::from_files(tokenizer, config);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(config), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("<nope>"), std::string::npos) << e.what();
  }
}

TEST(TokenizerApi, LookupsAgreeWithTheFile) {
  const Tokenizer tok = Tokenizer::from_dir(kFixtures + "/sp_bpe");
  const json file = read(kFixtures + "/sp_bpe/tokenizer.json");
  for (const auto& [token, id] : file["model"]["vocab"].items()) {
    ASSERT_EQ(tok.token_to_id(token), id.get<int32_t>()) << token;
    ASSERT_EQ(tok.id_to_token(id.get<int32_t>()), token);
  }
  int32_t largest = 0;
  for (const json& a : file["added_tokens"]) {
    EXPECT_EQ(tok.token_to_id(a["content"].get<std::string>()), a["id"].get<int32_t>());
    EXPECT_EQ(tok.is_special(a["id"].get<int32_t>()), a["special"].get<bool>());
    largest = std::max(largest, a["id"].get<int32_t>());
  }
  EXPECT_GT(tok.vocab_size(), largest);
  EXPECT_EQ(tok.id_to_token(tok.vocab_size()), std::nullopt);
  EXPECT_EQ(tok.id_to_token(-1), std::nullopt);
  EXPECT_EQ(tok.token_to_id("no such token at all"), std::nullopt);
  const json config = read(kFixtures + "/sp_bpe/tokenizer_config.json");
  EXPECT_EQ(tok.bos_id(), tok.token_to_id(config["bos_token"].get<std::string>()));
  EXPECT_EQ(tok.eos_id(), tok.token_to_id(config["eos_token"].get<std::string>()));
}

TEST(TokenizerApi, DecodeSkipsIdsOutsideTheVocabulary) {
  const Tokenizer tok = Tokenizer::from_dir(kFixtures + "/llama3_bpe");
  const std::vector<int32_t> ids = tok.encode("Hello world", false);
  std::vector<int32_t> with_bad = ids;
  with_bad.insert(with_bad.begin() + 1, {-5, tok.vocab_size(), 1 << 30});
  EXPECT_EQ(tok.decode(with_bad), tok.decode(ids));
}

TEST(TokenizerApi, StreamingNeverSplitsACharacterAcrossSteps) {
  // Byte-fallback pieces of a 4-byte emoji arrive one id at a time: nothing until it is complete.
  const Tokenizer tok = Tokenizer::from_dir(kFixtures + "/sp_bpe");
  const std::string text = "ok \xF0\x9F\xA6\x84 done";  // U+1F984, outside the trained alphabet
  const std::vector<int32_t> ids = tok.encode(text, false);
  StreamDecoder stream(tok);
  std::string out;
  int empty_steps = 0;
  for (const int32_t id : ids) {
    const std::string piece = stream.step(id);
    empty_steps += piece.empty();
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos);
    out += piece;
  }
  out += stream.flush();
  EXPECT_EQ(out, tok.decode(ids));
  EXPECT_GE(empty_steps, 3);  // the first three bytes of the emoji are held back
}

// A later byte token can turn the earlier bytes of its run into U+FFFDs: four <0x00> decode to
// four NULs alone, but with an incomplete <0xE4> after them the run is one U+FFFD per byte. The
// stream holds a run back until it ends, so it never emits NULs that decode() does not have
// (the tokenizer fuzzer found this).
TEST(TokenizerApi, StreamingWaitsForTheEndOfAByteRun) {
  const Tokenizer tok = Tokenizer::from_dir(kFixtures + "/sp_bpe");
  const std::optional<int32_t> nul = tok.token_to_id("<0x00>"), e4 = tok.token_to_id("<0xE4>");
  ASSERT_TRUE(nul && e4);
  std::vector<int32_t> ids = tok.encode("a", false);
  ids.insert(ids.end(), {*nul, *nul, *nul, *nul, *e4});
  const std::vector<int32_t> tail = tok.encode(" done", false);
  ids.insert(ids.end(), tail.begin(), tail.end());
  const std::string full = tok.decode(ids);
  EXPECT_EQ(full.find('\0'), std::string::npos);
  StreamDecoder stream(tok);
  std::string out;
  for (const int32_t id : ids) out += stream.step(id);
  out += stream.flush();
  EXPECT_EQ(out, full);
}

}  // namespace
}  // namespace marlin
