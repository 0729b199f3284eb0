// Writing safetensors files (single and sharded) with the byte layout of the Hugging Face
// library, so that files round-trip through Python unchanged.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "marlin/safetensors.h"

namespace marlin {

namespace {

constexpr std::string_view kOp = "save_safetensors";

// The HF library (safetensors 0.4+) orders tensors by its Dtype enum, last variant first, then
// by name; this is that enum's order for the dtypes we write.
int hf_dtype_rank(DType dtype) {
  switch (dtype) {
    case DType::boolean: return 0;
    case DType::u8: return 1;
    case DType::i8: return 2;
    case DType::fp8_e4m3: return 3;
    case DType::i16: return 4;
    case DType::f16: return 5;
    case DType::bf16: return 6;
    case DType::i32: return 7;
    case DType::u32: return 8;
    case DType::f32: return 9;
    case DType::f64: return 10;
    case DType::i64: return 11;
  }
  return -1;
}

struct WritePlan {
  std::string header;                // JSON padded with spaces to a multiple of 8 bytes
  std::vector<const Tensor*> order;  // tensors in data order
  uint64_t data_bytes = 0;
};

WritePlan plan_file(const NamedTensors& tensors, const SafetensorsMetadata& metadata) {
  std::set<std::string> names;
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    MARLIN_CHECK(name != "__metadata__", kOp, "a tensor cannot be named \"__metadata__\"");
    MARLIN_CHECK(names.insert(name).second, kOp, "tensor \"", name, "\" is given twice");
    MARLIN_CHECK(tensor.defined(), kOp, "tensor \"", name, "\" is undefined");
    MARLIN_CHECK(!safetensors_dtype_name(tensor.dtype()).empty(), kOp, "tensor \"", name,
                 "\" has dtype ", dtype_name(tensor.dtype()), ", which safetensors cannot store");
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int rank_a = hf_dtype_rank(tensors[a].second.dtype());
    const int rank_b = hf_dtype_rank(tensors[b].second.dtype());
    if (rank_a != rank_b) return rank_a > rank_b;
    return tensors[a].first < tensors[b].first;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  WritePlan plan;
  for (size_t i : order) {
    const auto& [name, tensor] = tensors[i];
    const uint64_t begin = plan.data_bytes;
    plan.data_bytes += tensor.nbytes();
    nlohmann::ordered_json entry;
    entry["dtype"] = safetensors_dtype_name(tensor.dtype());
    entry["shape"] = tensor.shape();
    entry["data_offsets"] = {begin, plan.data_bytes};
    header[name] = std::move(entry);
    plan.order.push_back(&tensor);
  }
  try {
    plan.header = header.dump();  // compact, as serde_json writes it
  } catch (const nlohmann::json::exception& e) {
    fail(kOp, "a tensor name or metadata string is not valid UTF-8: ", e.what());
  }
  plan.header.append((8 - plan.header.size() % 8) % 8, ' ');
  return plan;
}

// Streams the file's bytes to `sink(pointer, size)`, one tensor at a time, so that a large
// checkpoint never needs a second copy in memory.
template <typename Sink>
void emit(const WritePlan& plan, Sink&& sink) {
  uint8_t prefix[8];
  uint64_t length = plan.header.size();
  for (int i = 0; i < 8; ++i, length >>= 8) prefix[i] = static_cast<uint8_t>(length & 0xff);
  sink(prefix, sizeof(prefix));
  sink(reinterpret_cast<const uint8_t*>(plan.header.data()), plan.header.size());
  for (const Tensor* tensor : plan.order) {
    if (tensor->numel() == 0) continue;
    const Tensor host = tensor->contiguous().to(Device::cpu());
    sink(static_cast<const uint8_t*>(host.data_ptr()), host.nbytes());
  }
}

void write_file(const std::string& path, const NamedTensors& tensors,
                const SafetensorsMetadata& metadata) {
  const WritePlan plan = plan_file(tensors, metadata);
  const std::string temporary = path + ".tmp";
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  MARLIN_CHECK(file != nullptr, kOp, path, ": cannot create ", temporary, ": ",
               std::strerror(errno));
  bool ok = true;
  try {
    emit(plan, [&](const uint8_t* data, size_t size) {
      ok = ok && std::fwrite(data, 1, size, file) == size;
    });
  } catch (...) {
    std::fclose(file);
    std::remove(temporary.c_str());
    throw;
  }
  ok = std::fclose(file) == 0 && ok;
  if (!ok) {
    const int saved = errno;
    std::remove(temporary.c_str());
    fail(kOp, path, ": writing failed: ", std::strerror(saved));
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) {
    std::remove(temporary.c_str());
    fail(kOp, path, ": cannot move ", temporary, " into place: ", ec.message());
  }
}

std::string shard_name(const std::string& prefix, size_t index, size_t count) {
  char numbers[32];
  std::snprintf(numbers, sizeof(numbers), "-%05zu-of-%05zu", index + 1, count);
  return prefix + numbers + ".safetensors";
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors,
                                           const SafetensorsMetadata& metadata) {
  const WritePlan plan = plan_file(tensors, metadata);
  std::vector<uint8_t> bytes;
  bytes.reserve(8 + plan.header.size() + plan.data_bytes);
  emit(plan,
       [&](const uint8_t* data, size_t size) { bytes.insert(bytes.end(), data, data + size); });
  return bytes;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata) {
  write_file(path, tensors, metadata);
}

ShardedSaveResult save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                           uint64_t max_shard_bytes,
                                           const SafetensorsMetadata& metadata,
                                           const std::string& prefix) {
  MARLIN_CHECK(max_shard_bytes > 0, kOp, dir, ": max_shard_bytes must be positive");
  plan_file(tensors, metadata);  // rejects bad names and dtypes before any shard is written
  MARLIN_CHECK(!prefix.empty() && prefix.find('/') == std::string::npos, kOp, dir,
               ": file prefix \"", prefix, "\" must be a plain file name");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MARLIN_CHECK(!ec, kOp, dir, ": cannot create the directory: ", ec.message());

  // Greedy split in the given order, as huggingface_hub's split_state_dict_into_shards does.
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& named : tensors) {
    const uint64_t size = named.second.defined() ? named.second.nbytes() : 0;
    if (!shards.back().empty() && shard_bytes + size > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(named);
    shard_bytes += size;
    total_bytes += size;
  }

  ShardedSaveResult result;
  const std::filesystem::path base(dir);
  if (shards.size() == 1) {
    result.files.push_back((base / (prefix + ".safetensors")).string());
    write_file(result.files[0], shards[0], metadata);
    return result;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::map<std::string, std::string> sorted_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shard_name(prefix, i, shards.size());
    result.files.push_back((base / name).string());
    write_file(result.files.back(), shards[i], metadata);
    for (const auto& named : shards[i]) sorted_map.emplace(named.first, name);
  }
  for (const auto& [tensor, file] : sorted_map) weight_map[tensor] = file;
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total_bytes}};
  index["weight_map"] = std::move(weight_map);
  result.index_path = (base / (prefix + ".safetensors.index.json")).string();
  std::ofstream out(result.index_path, std::ios::binary | std::ios::trunc);
  out << index.dump(2) << "\n";
  out.close();
  MARLIN_CHECK(out.good(), kOp, result.index_path, ": writing the index failed");
  return result;
}

}  // namespace marlin
