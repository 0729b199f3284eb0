// safetensors checkpoints: a validating, memory-mapping reader that hands out tensors without
// copying (single files and directories sharded through model.safetensors.index.json), and a
// writer whose bytes equal those of the Hugging Face `safetensors` library for the same tensors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "marlin/tensor.h"

namespace marlin {

using SafetensorsMetadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// "F64", "F32", "F16", "BF16", "F8_E4M3", "I64", "I32", "U32", "I16", "I8", "U8", "BOOL" <->
// DType. Other names (U16, U64, F8_E5M2, ...) give std::nullopt.
std::optional<DType> safetensors_dtype_from_name(std::string_view name);
std::string_view safetensors_dtype_name(DType dtype);

struct SafetensorsTensorInfo {
  DType dtype = DType::f32;
  Shape shape;
  uint64_t data_begin = 0;  // byte offsets relative to the start of the data region
  uint64_t data_end = 0;
  uint64_t nbytes() const { return data_end - data_begin; }
};

// One .safetensors file. The header is validated completely when the file is opened, so every
// later call on a valid file succeeds; a malformed or truncated file is a marlin::Error naming
// the file and the tensor or field. Copies share the mapping; tensors keep it alive.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  // Parses bytes held in memory (tests, fuzzing); `label` stands for the file name in errors.
  static SafetensorsFile from_bytes(std::vector<uint8_t> bytes, const std::string& label);

  const std::string& path() const;
  const std::vector<std::string>& names() const;  // sorted
  bool has(const std::string& name) const;
  const SafetensorsTensorInfo& info(const std::string& name) const;
  // A CPU tensor viewing the mapped bytes (copy-on-write: writing into it never changes the
  // file). A tensor whose offset is not a multiple of its element size is copied instead, so
  // that typed access stays aligned.
  Tensor tensor(const std::string& name) const;
  const SafetensorsMetadata& metadata() const;
  uint64_t header_size() const;  // the 8-byte length prefix's value

  struct State;  // opaque; defined in src/io

 private:
  explicit SafetensorsFile(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

// A model's weights: `path` is a directory holding model.safetensors or
// model.safetensors.index.json (with its shards), a .safetensors file, or an index file. Every
// shard is opened and validated up front, and every tensor the index names must be in its shard.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::string& path);

  const std::vector<std::string>& names() const;  // sorted, over all shards
  bool has(const std::string& name) const;
  const SafetensorsTensorInfo& info(const std::string& name) const;
  Tensor tensor(const std::string& name) const;
  // The file that holds `name`.
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<SafetensorsFile>& files() const;
  // Where the checkpoint was found: the index file, or the single .safetensors file.
  const std::string& source() const;

  struct State;  // opaque; defined in src/io

 private:
  explicit SafetensorsCheckpoint(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

// The bytes of a safetensors file: tensors (CPU or CUDA, any strides) copied to the host and laid
// out as the Hugging Face library does (ordered by dtype, widest first, then by name; header
// padded with spaces to a multiple of 8 bytes). Names must be unique, valid UTF-8, and not
// "__metadata__".
std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors,
                                           const SafetensorsMetadata& metadata = {});
// Writes serialize_safetensors' bytes to `path` (through a temporary file renamed into place).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata = {});

struct ShardedSaveResult {
  std::vector<std::string> files;  // the .safetensors files written, in shard order
  std::string index_path;          // empty when everything fit in one file
};

// Writes `tensors` into directory `dir` as the Hugging Face libraries do: tensors, in the given
// order, fill a shard until the next one would push it past `max_shard_bytes` (a larger tensor
// gets a shard of its own); several shards are named <prefix>-00001-of-0000N.safetensors and
// listed in <prefix>.safetensors.index.json, a single shard is <prefix>.safetensors, no index.
ShardedSaveResult save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                           uint64_t max_shard_bytes,
                                           const SafetensorsMetadata& metadata = {},
                                           const std::string& prefix = "model");

}  // namespace marlin
