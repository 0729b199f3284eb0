// safetensors write -> read round trips (every dtype, empty and scalar tensors, metadata,
// strided sources, shards) and the zero-copy, alignment and lifetime rules of the reader.
#include "marlin/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "io/safetensors_test_util.h"

namespace marlin {
namespace {

using testing::random_bytes_tensor;
using testing::ScratchDir;

constexpr DType kAllDTypes[] = {DType::f64,      DType::f32, DType::f16, DType::bf16,
                                DType::fp8_e4m3, DType::i64, DType::i32, DType::u32,
                                DType::i16,      DType::i8,  DType::u8,  DType::boolean};

void expect_same_bytes(const Tensor& got, const Tensor& want, const std::string& name) {
  ASSERT_EQ(got.dtype(), want.dtype()) << name;
  ASSERT_EQ(got.shape(), want.shape()) << name;
  const Tensor w = want.contiguous();
  ASSERT_EQ(std::memcmp(got.data_ptr(), w.data_ptr(), w.nbytes()), 0) << name;
}

TEST(Safetensors, DTypeNamesRoundTrip) {
  for (DType dtype : kAllDTypes) {
    const auto name = safetensors_dtype_name(dtype);
    ASSERT_FALSE(name.empty()) << dtype_name(dtype);
    EXPECT_EQ(safetensors_dtype_from_name(name), dtype) << name;
  }
  EXPECT_EQ(safetensors_dtype_from_name("F8_E5M2"), std::nullopt);
  EXPECT_EQ(safetensors_dtype_from_name("f32"), std::nullopt);  // names are upper case
}

TEST(Safetensors, RoundTripEveryDType) {
  ScratchDir dir("roundtrip");
  NamedTensors tensors;
  uint64_t seed = 1;
  for (DType dtype : kAllDTypes) {
    const std::string base(safetensors_dtype_name(dtype));
    tensors.emplace_back("w." + base, random_bytes_tensor({3, 5}, dtype, seed++));
    tensors.emplace_back("scalar." + base, random_bytes_tensor({}, dtype, seed++));
    tensors.emplace_back("empty." + base, random_bytes_tensor({0, 4}, dtype, seed++));
  }
  const SafetensorsMetadata metadata{{"format", "pt"}, {"note", "round trip"}};
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, tensors, metadata);

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_EQ(file.header_size() % 8, 0u);  // padded as the HF library pads
  ASSERT_EQ(file.names().size(), tensors.size());
  EXPECT_TRUE(std::is_sorted(file.names().begin(), file.names().end()));
  for (const auto& [name, tensor] : tensors) {
    ASSERT_TRUE(file.has(name)) << name;
    EXPECT_EQ(file.info(name).dtype, tensor.dtype());
    EXPECT_EQ(file.info(name).shape, tensor.shape());
    expect_same_bytes(file.tensor(name), tensor, name);
  }
  EXPECT_FALSE(file.has("missing"));
  // The in-memory reader sees the same file.
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(bytes, serialize_safetensors(tensors, metadata));
  const SafetensorsFile in_memory = SafetensorsFile::from_bytes(bytes, "memory");
  EXPECT_EQ(in_memory.names(), file.names());
}

TEST(Safetensors, TensorsAreAlignedViewsThatOutliveTheFile) {
  ScratchDir dir("views");
  const Tensor wide = random_bytes_tensor({7, 3}, DType::f64, 11);
  const Tensor narrow = random_bytes_tensor({5}, DType::u8, 12);
  const std::string path = dir.file("v.safetensors");
  save_safetensors(path, {{"narrow", narrow}, {"wide", wide}});
  Tensor view;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    view = file.tensor("wide");
    // Zero copy: two requests see the same bytes of the mapping.
    EXPECT_EQ(file.tensor("wide").data_ptr(), view.data_ptr());
  }
  std::filesystem::remove(path);  // the mapping keeps the bytes alive
  EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data_ptr()) % 8, 0u);
  expect_same_bytes(view, wide, "wide");
  // Copy-on-write: writing into a view is allowed and stays private.
  view.data<double>()[0] = 42.0;
  EXPECT_EQ(view.item_as_double({0, 0}), 42.0);
}

TEST(Safetensors, MisalignedTensorIsCopiedAligned) {
  // Hand-made file whose f32 tensor starts at data byte 1 (after a 1-byte u8 tensor): the HF
  // writer never does this, other writers might.
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  std::vector<uint8_t> bytes = testing::file_bytes(header, 9);
  const float values[2] = {1.5f, -2.25f};
  std::memcpy(bytes.data() + 8 + header.size() + 1, values, sizeof(values));
  const SafetensorsFile file = SafetensorsFile::from_bytes(bytes, "misaligned");
  const Tensor b = file.tensor("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data_ptr()) % 4, 0u);
  EXPECT_EQ(b.item_as_double({0}), 1.5);
  EXPECT_EQ(b.item_as_double({1}), -2.25);
}

TEST(Safetensors, StridedAndCudaSourcesAreWrittenContiguous) {
  ScratchDir dir("strided");
  const Tensor base = random_bytes_tensor({4, 6}, DType::f32, 21);
  const Tensor transposed = base.transpose(0, 1);  // not contiguous
  NamedTensors tensors{{"t", transposed}};
  if (cuda_available()) tensors.emplace_back("on_gpu", base.to(Device::cuda(0)));
  const std::string path = dir.file("s.safetensors");
  save_safetensors(path, tensors);
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.tensor("t").to_float_vector(), transposed.contiguous().to_float_vector());
  if (cuda_available()) expect_same_bytes(file.tensor("on_gpu"), base, "on_gpu");
}

TEST(Safetensors, WriterRejectsBadInput) {
  const Tensor t = random_bytes_tensor({2}, DType::f32, 31);
  EXPECT_THROW(serialize_safetensors({{"x", t}, {"x", t}}), Error);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", t}}), Error);
  EXPECT_THROW(serialize_safetensors({{"undefined", Tensor()}}), Error);
  EXPECT_THROW(serialize_safetensors({{std::string("bad\xff utf8"), t}}), Error);
}

TEST(Safetensors, ShardedRoundTrip) {
  ScratchDir dir("sharded");
  NamedTensors tensors;
  for (int layer = 0; layer < 5; ++layer) {
    tensors.emplace_back("layers." + std::to_string(layer) + ".w",
                         random_bytes_tensor({16, 8}, DType::bf16, 40 + layer));  // 256 bytes
    tensors.emplace_back("layers." + std::to_string(layer) + ".scale",
                         random_bytes_tensor({8}, DType::f32, 50 + layer));  // 32 bytes
  }
  tensors.emplace_back("big", random_bytes_tensor({200}, DType::f32, 60));  // 800 bytes, alone
  const ShardedSaveResult saved = save_safetensors_sharded(dir.path(), tensors, 600);
  ASSERT_FALSE(saved.index_path.empty());
  // Greedy fill: 288 + 288 fit in 600, the third layer starts a new shard; big gets its own.
  ASSERT_EQ(saved.files.size(), 4u);
  EXPECT_EQ(std::filesystem::path(saved.files[0]).filename(), "model-00001-of-00004.safetensors");
  for (const auto& file : saved.files) EXPECT_LE(std::filesystem::file_size(file), 1000u);

  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(dir.path());
  EXPECT_EQ(checkpoint.source(), saved.index_path);
  EXPECT_EQ(checkpoint.files().size(), 4u);
  ASSERT_EQ(checkpoint.names().size(), tensors.size());
  for (const auto& [name, tensor] : tensors)
    expect_same_bytes(checkpoint.tensor(name), tensor, name);
  EXPECT_EQ(checkpoint.file_of("big").path(), saved.files[3]);
  EXPECT_THROW(checkpoint.tensor("missing"), Error);

  // The index records the total size as the HF libraries write it.
  std::ifstream in(saved.index_path);
  const auto index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 5u * (256 + 32) + 800);
}

TEST(Safetensors, OneShardMeansOneFileWithoutIndex) {
  ScratchDir dir("single");
  const Tensor t = random_bytes_tensor({3, 3}, DType::f16, 70);
  const ShardedSaveResult saved = save_safetensors_sharded(dir.path(), {{"t", t}}, 1 << 20);
  EXPECT_TRUE(saved.index_path.empty());
  ASSERT_EQ(saved.files.size(), 1u);
  EXPECT_EQ(std::filesystem::path(saved.files[0]).filename(), "model.safetensors");
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(dir.path());
  expect_same_bytes(checkpoint.tensor("t"), t, "t");
  // The file itself also opens as a checkpoint.
  EXPECT_EQ(SafetensorsCheckpoint::open(saved.files[0]).names(), std::vector<std::string>{"t"});
}

}  // namespace
}  // namespace marlin
