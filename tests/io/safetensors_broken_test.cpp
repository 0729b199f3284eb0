// The corpus of broken safetensors files and checkpoints: each must be refused with a
// marlin::Error whose message names the file and the offending tensor or field.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "io/safetensors_test_util.h"
#include "marlin/safetensors.h"

namespace marlin {
namespace {

using testing::file_bytes;
using testing::ScratchDir;

struct BrokenFile {
  std::string name;  // also the file name on disk
  std::vector<uint8_t> bytes;
  std::vector<std::string> mentions;  // substrings the error message must contain
};

// One valid two-tensor header: "a" = F32[2] at [0, 8), "b" = I16[3] at [8, 14).
const std::string kGoodHeader = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]}})";

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

std::vector<BrokenFile> broken_corpus() {
  std::vector<BrokenFile> corpus;
  auto add = [&](std::string name, std::vector<uint8_t> bytes, std::vector<std::string> mentions) {
    corpus.push_back({std::move(name), std::move(bytes), std::move(mentions)});
  };
  auto one = [](const std::string& body, size_t data) {
    return file_bytes("{" + body + "}", data);
  };

  add("empty", {}, {"too short"});
  add("short_length", {0x10, 0, 0, 0, 0}, {"too short"});
  add("length_past_end", file_bytes(kGoodHeader, 14, kGoodHeader.size() + 100),
      {"header length", "past the end"});
  add("length_over_limit", file_bytes(kGoodHeader, 14, uint64_t{1} << 40), {"exceeds the limit"});
  add("not_json", file_bytes("{\"a\": nope}", 0), {"not valid JSON"});
  add("trailing_garbage", file_bytes("{} extra", 0), {"not valid JSON"});
  add("invalid_utf8", file_bytes("{\"\xff\":1}", 0), {"not valid JSON"});
  add("header_is_array", file_bytes("[1,2]", 0), {"must be a JSON object"});
  add("entry_not_object", one("\"w\":[1]", 0), {"\"w\"", "entry must be an object"});
  add("wrong_dtype", one(entry("w", "\"F33\"", "[2]", "[0,8]"), 8), {"\"w\"", "F33", "BF16"});
  add("dtype_not_string", one(entry("w", "4", "[2]", "[0,8]"), 8), {"\"w\"", "dtype"});
  add("negative_shape", one(entry("w", "\"F32\"", "[-1,2]", "[0,8]"), 8), {"\"w\"", "shape[0]"});
  add("fractional_shape", one(entry("w", "\"F32\"", "[2,1.5]", "[0,8]"), 8), {"\"w\"", "shape[1]"});
  add("overflowing_shape", one(entry("w", "\"F32\"", "[4294967296,4294967296,16]", "[0,8]"), 8),
      {"\"w\"", "overflows"});
  add("empty_but_overflowing_shape",
      one(entry("w", "\"F32\"", "[0,4294967296,4294967296]", "[0,0]"), 0), {"\"w\"", "overflows"});
  add("shape_not_array", one(entry("w", "\"F32\"", "2", "[0,8]"), 8), {"\"w\"", "shape"});
  add("offsets_out_of_range", one(entry("w", "\"F32\"", "[2]", "[992,1000]"), 8),
      {"\"w\"", "data_offsets", "past the end"});
  add("offsets_reversed", one(entry("w", "\"F32\"", "[0]", "[8,0]"), 8), {"\"w\"", "begin after"});
  add("offsets_arity", one(entry("w", "\"F32\"", "[2]", "[0]"), 8), {"\"w\"", "data_offsets"});
  add("offsets_negative", one(entry("w", "\"F32\"", "[2]", "[-8,0]"), 8),
      {"\"w\"", "data_offsets"});
  add("size_mismatch", one(entry("w", "\"F32\"", "[3]", "[0,8]"), 8), {"\"w\"", "need 12"});
  add("overlap",
      one(entry("a", "\"F32\"", "[2]", "[0,8]") + "," + entry("b", "\"F32\"", "[2]", "[4,12]"), 12),
      {"\"b\"", "overlaps tensor \"a\""});
  add("empty_tensor_inside_another",
      one(entry("a", "\"F32\"", "[2]", "[0,8]") + "," + entry("z", "\"F32\"", "[0]", "[4,4]"), 8),
      {"\"z\"", "overlaps"});
  add("gap",
      one(entry("a", "\"F32\"", "[1]", "[0,4]") + "," + entry("b", "\"F32\"", "[1]", "[8,12]"), 12),
      {"\"b\"", "gap of 4 bytes"});
  add("gap_before_first", one(entry("a", "\"F32\"", "[1]", "[4,8]"), 8), {"\"a\"", "gap"});
  add("unaccounted_tail", one(entry("a", "\"F32\"", "[1]", "[0,4]"), 8),
      {"\"a\"", "4 bytes after"});
  add("duplicate_name",
      one(entry("a", "\"F32\"", "[1]", "[0,4]") + "," + entry("a", "\"F32\"", "[1]", "[4,8]"), 8),
      {"\"a\"", "twice"});
  add("metadata_not_strings", one("\"__metadata__\":{\"format\":1}", 0),
      {"__metadata__", "format"});
  add("metadata_not_object", one("\"__metadata__\":[]", 0), {"__metadata__"});
  add("missing_field", one("\"w\":{\"dtype\":\"F32\",\"shape\":[1]}", 4),
      {"\"w\"", "data_offsets"});
  add("unknown_field",
      one("\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}", 4),
      {"\"w\"", "\"x\""});
  add("deep_nesting", file_bytes("{\"w\":{\"dtype\":[[[[[[1]]]]]]}}", 0), {"nests"});
  std::vector<uint8_t> truncated = file_bytes(kGoodHeader, 14);
  truncated.resize(truncated.size() - 3);
  add("truncated_data", truncated, {"\"b\"", "truncated"});
  return corpus;
}

void expect_error_mentions(const std::function<void()>& action,
                           const std::vector<std::string>& mentions, const std::string& what) {
  try {
    action();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& needle : mentions)
      EXPECT_NE(message.find(needle), std::string::npos)
          << what << ": message lacks \"" << needle << "\": " << message;
  }
}

TEST(SafetensorsBroken, GoodHeaderOfTheCorpusIsValid) {
  // The corpus mutates this file; it must itself be accepted.
  const SafetensorsFile file = SafetensorsFile::from_bytes(file_bytes(kGoodHeader, 14), "good");
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(file.info("b").shape, Shape{3});
}

TEST(SafetensorsBroken, EveryBrokenFileIsRefusedNamingFileAndField) {
  ScratchDir dir("broken");
  for (const BrokenFile& broken : broken_corpus()) {
    const std::string path = dir.file(broken.name + ".safetensors");
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(broken.bytes.data()),
               static_cast<std::streamsize>(broken.bytes.size()));
    std::vector<std::string> mentions = broken.mentions;
    mentions.push_back(broken.name + ".safetensors");
    expect_error_mentions([&] { SafetensorsFile::open(path); }, mentions, broken.name);
    expect_error_mentions([&] { SafetensorsFile::from_bytes(broken.bytes, broken.name); },
                          broken.mentions, broken.name + " (in memory)");
  }
}

TEST(SafetensorsBroken, MissingFileAndDirectory) {
  ScratchDir dir("missing");
  expect_error_mentions([&] { SafetensorsFile::open(dir.file("nope.safetensors")); },
                        {"nope.safetensors", "cannot open"}, "missing file");
  expect_error_mentions([&] { SafetensorsCheckpoint::open(dir.path()); },
                        {dir.path(), "model.safetensors.index.json"}, "empty directory");
}

class ShardedBroken : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::vector<uint8_t> shard = file_bytes(kGoodHeader, 14);
    std::ofstream(dir_.file("model-00001-of-00002.safetensors"), std::ios::binary)
        .write(reinterpret_cast<const char*>(shard.data()),
               static_cast<std::streamsize>(shard.size()));
  }
  void write_index(const std::string& text) {
    std::ofstream(dir_.file("model.safetensors.index.json")) << text;
  }
  void expect_refused(const std::vector<std::string>& mentions, const std::string& what) {
    std::vector<std::string> all = mentions;
    all.push_back("model.safetensors.index.json");
    expect_error_mentions([&] { SafetensorsCheckpoint::open(dir_.path()); }, all, what);
  }
  ScratchDir dir_{"sharded_broken"};
};

TEST_F(ShardedBroken, ValidIndexOpens) {
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("b":"model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir_.path()).names().size(), 2u);
}

TEST_F(ShardedBroken, MissingShard) {
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("c":"model-00002-of-00002.safetensors"}})");
  expect_refused({"model-00002-of-00002.safetensors", "\"c\"", "does not exist"}, "missing shard");
}

TEST_F(ShardedBroken, IndexNamesTensorMissingFromShard) {
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("ghost":"model-00001-of-00002.safetensors"}})");
  expect_refused({"\"ghost\"", "not in its shard"}, "missing tensor");
}

TEST_F(ShardedBroken, IndexNotJson) {
  write_index("{\"weight_map\": ");
  expect_refused({"not valid JSON"}, "index not JSON");
}

TEST_F(ShardedBroken, IndexWithoutWeightMap) {
  write_index(R"({"metadata":{"total_size":14}})");
  expect_refused({"weight_map"}, "no weight_map");
}

TEST_F(ShardedBroken, ShardNameEscapesDirectory) {
  write_index(R"({"weight_map":{"a":"../model-00001-of-00002.safetensors"}})");
  expect_refused({"\"a\"", "not a plain file name"}, "path traversal");
}

TEST_F(ShardedBroken, ShardNameNotString) {
  write_index(R"({"weight_map":{"a":7}})");
  expect_refused({"\"a\"", "string"}, "shard not a string");
}

TEST_F(ShardedBroken, BrokenShardNamesTheShard) {
  std::ofstream(dir_.file("model-00002-of-00002.safetensors"), std::ios::binary) << "garbage!";
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("c":"model-00002-of-00002.safetensors"}})");
  expect_error_mentions([&] { SafetensorsCheckpoint::open(dir_.path()); },
                        {"model-00002-of-00002.safetensors", "header length"}, "broken shard");
}

}  // namespace
}  // namespace marlin
