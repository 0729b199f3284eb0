// Memory-mapped safetensors files and sharded checkpoints: tensors are views of the mapping,
// which lives as long as any file object or tensor refers to it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors_header.h"
#include "marlin/safetensors.h"

namespace marlin {

namespace {

constexpr std::string_view kOp = "safetensors";

// The bytes of one file: a private (copy-on-write) mapping, or a vector for in-memory input.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint8_t* data() = 0;
  virtual size_t size() const = 0;
};

class MappedFile final : public ByteSource {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MARLIN_CHECK(fd >= 0, kOp, path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    const bool stat_ok = ::fstat(fd, &st) == 0;
    const int stat_errno = errno;
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      ::close(fd);
      fail(kOp, path, ": ", stat_ok ? "not a regular file" : std::strerror(stat_errno));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      // Writable private pages: a caller that writes into a weight changes its own copy, never
      // the file, and never faults. Fall back to read-only where the writable map is refused.
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int saved = errno;
      ::close(fd);
      MARLIN_CHECK(p != MAP_FAILED, kOp, path, ": cannot map ", size_,
                   " bytes: ", std::strerror(saved));
      data_ = static_cast<uint8_t*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() override {
    if (data_) ::munmap(data_, size_);
  }
  uint8_t* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class OwnedBytes final : public ByteSource {
 public:
  explicit OwnedBytes(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  uint8_t* data() override { return bytes_.data(); }
  size_t size() const override { return bytes_.size(); }

 private:
  std::vector<uint8_t> bytes_;
};

using io::quote_name;

}  // namespace

struct SafetensorsFile::State {
  std::string path;
  std::shared_ptr<ByteSource> bytes;
  io::SafetensorsHeader header;
  std::vector<std::string> names;
};

namespace {
std::shared_ptr<const SafetensorsFile::State> make_state(std::string path,
                                                         std::shared_ptr<ByteSource> bytes) {
  auto state = std::make_shared<SafetensorsFile::State>();
  state->header = io::parse_safetensors_header(bytes->data(), bytes->size(), path);
  state->path = std::move(path);
  state->bytes = std::move(bytes);
  for (const auto& entry : state->header.tensors) state->names.push_back(entry.first);
  return state;
}
}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  return SafetensorsFile(make_state(path, std::make_shared<MappedFile>(path)));
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<uint8_t> bytes, const std::string& label) {
  return SafetensorsFile(make_state(label, std::make_shared<OwnedBytes>(std::move(bytes))));
}

const std::string& SafetensorsFile::path() const { return state_->path; }
const std::vector<std::string>& SafetensorsFile::names() const { return state_->names; }
const SafetensorsMetadata& SafetensorsFile::metadata() const { return state_->header.metadata; }
uint64_t SafetensorsFile::header_size() const { return state_->header.header_size; }

bool SafetensorsFile::has(const std::string& name) const {
  return state_->header.tensors.count(name) != 0;
}

const SafetensorsTensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = state_->header.tensors.find(name);
  MARLIN_CHECK(it != state_->header.tensors.end(), kOp, state_->path, ": no tensor ",
               quote_name(name), " (the file holds ", state_->names.size(), " tensors)");
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsTensorInfo& entry = info(name);
  // Validated: data_start + data_end <= the file's size, which is at least 8 (never unmapped).
  uint8_t* p = state_->bytes->data() + state_->header.data_start + entry.data_begin;
  const size_t element = dtype_size(entry.dtype);
  if (reinterpret_cast<uintptr_t>(p) % element != 0) {
    // Files written by other tools may misalign a tensor; copy it rather than hand out a view
    // that typed loads (and CUDA copies of vector width) would read unaligned.
    Tensor copy = Tensor::empty(entry.shape, entry.dtype);
    if (entry.nbytes() > 0) std::memcpy(copy.data_ptr(), p, entry.nbytes());
    return copy;
  }
  return Tensor::from_blob(p, entry.shape, entry.dtype, Device::cpu(),
                           std::shared_ptr<void>(state_->bytes, state_->bytes.get()));
}

// --- sharded checkpoints ---------------------------------------------------------------------

struct SafetensorsCheckpoint::State {
  std::string source;
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> file_of;  // tensor name -> index into files
  std::vector<std::string> names;
};

namespace {

namespace fs = std::filesystem;

nlohmann::json read_index(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MARLIN_CHECK(in.good(), kOp, path, ": cannot open the index file");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    fail(kOp, path, ": index is not valid JSON: ", e.what());
  }
}

// Shard names must stay inside the checkpoint directory.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

std::shared_ptr<SafetensorsCheckpoint::State> open_index(const std::string& index_path) {
  const nlohmann::json index = read_index(index_path);
  MARLIN_CHECK(index.is_object(), kOp, index_path, ": index must be a JSON object");
  MARLIN_CHECK(index.contains("weight_map"), kOp, index_path, ": index has no \"weight_map\"");
  const auto& weight_map = index["weight_map"];
  MARLIN_CHECK(weight_map.is_object(), kOp, index_path,
               ": \"weight_map\" must be an object of tensor name -> shard file, got ",
               weight_map.type_name());
  if (index.contains("metadata")) {
    MARLIN_CHECK(index["metadata"].is_object() || index["metadata"].is_null(), kOp, index_path,
                 ": \"metadata\" must be an object");
  }

  auto state = std::make_shared<SafetensorsCheckpoint::State>();
  state->source = index_path;
  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_slot;
  for (const auto& [name, shard] : weight_map.items()) {
    MARLIN_CHECK(shard.is_string(), kOp, index_path, ": weight_map entry of tensor ",
                 quote_name(name), " must be a file name string, got ", shard.type_name());
    const std::string shard_name = shard.get<std::string>();
    MARLIN_CHECK(is_plain_file_name(shard_name), kOp, index_path, ": tensor ", quote_name(name),
                 " names shard ", quote_name(shard_name), ", which is not a plain file name");
    auto slot = shard_slot.find(shard_name);
    if (slot == shard_slot.end()) {
      const std::string shard_path = (dir / shard_name).string();
      MARLIN_CHECK(fs::exists(shard_path), kOp, index_path, ": shard ", quote_name(shard_name),
                   " (holding tensor ", quote_name(name), ") does not exist");
      state->files.push_back(SafetensorsFile::open(shard_path));
      slot = shard_slot.emplace(shard_name, state->files.size() - 1).first;
    }
    MARLIN_CHECK(state->files[slot->second].has(name), kOp, index_path, ": tensor ",
                 quote_name(name), " is not in its shard ", state->files[slot->second].path());
    state->file_of.emplace(name, slot->second);
    state->names.push_back(name);
  }
  return state;
}

std::shared_ptr<SafetensorsCheckpoint::State> open_single(const std::string& path) {
  auto state = std::make_shared<SafetensorsCheckpoint::State>();
  state->source = path;
  state->files.push_back(SafetensorsFile::open(path));
  for (const auto& name : state->files[0].names()) {
    state->file_of.emplace(name, 0);
    state->names.push_back(name);
  }
  return state;
}

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    // Transformers' order: the single file first, then the index.
    const fs::path single = fs::path(path) / "model.safetensors";
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(single)) return SafetensorsCheckpoint(open_single(single.string()));
    if (fs::exists(index)) return SafetensorsCheckpoint(open_index(index.string()));
    fail(kOp, path, ": directory has neither model.safetensors nor model.safetensors.index.json");
  }
  MARLIN_CHECK(fs::exists(path, ec), kOp, path, ": no such file or directory");
  if (ends_with(path, ".json")) return SafetensorsCheckpoint(open_index(path));
  return SafetensorsCheckpoint(open_single(path));
}

const std::vector<std::string>& SafetensorsCheckpoint::names() const { return state_->names; }
const std::vector<SafetensorsFile>& SafetensorsCheckpoint::files() const { return state_->files; }
const std::string& SafetensorsCheckpoint::source() const { return state_->source; }

bool SafetensorsCheckpoint::has(const std::string& name) const {
  return state_->file_of.count(name) != 0;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  const auto it = state_->file_of.find(name);
  MARLIN_CHECK(it != state_->file_of.end(), kOp, state_->source, ": no tensor ", quote_name(name),
               " in the checkpoint (", state_->names.size(), " tensors)");
  return state_->files[it->second];
}

const SafetensorsTensorInfo& SafetensorsCheckpoint::info(const std::string& name) const {
  return file_of(name).info(name);
}

Tensor SafetensorsCheckpoint::tensor(const std::string& name) const {
  return file_of(name).tensor(name);
}

}  // namespace marlin
