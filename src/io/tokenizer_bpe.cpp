// The BPE model: vocabulary, merges as a (left id, right id) -> (rank, merged id) hash table,
// the merge loop of `tokenizers` (a priority queue over a linked list of symbols, lowest rank
// first, leftmost on ties), unknown-character handling and byte fallback, and a word cache.
#include <algorithm>
#include <cstdio>
#include <queue>

#include "marlin/error.h"
#include "tokenizer_internal.h"

namespace marlin::tokenizer_detail {
namespace {

constexpr uint64_t kEmptySlot = ~uint64_t{0};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

uint64_t mix(uint64_t x) {  // splitmix64 finalizer: ids are small and dense, so spread them
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// One merge as written in the file: "a b" (older files) or ["a", "b"].
std::pair<std::string, std::string> parse_merge(const json& m, const std::string& file, size_t i) {
  const std::string where = "model.merges[" + std::to_string(i) + "]";
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
      fail_file(file, where, "merge \"" + s + "\" is not two tokens separated by one space");
    return {s.substr(0, space), s.substr(space + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  fail_file(file, where, "a merge must be \"a b\" or [\"a\", \"b\"], got " + m.dump());
}

}  // namespace

BpeModel::BpeModel(const json& model, const std::string& file) {
  if (!model.contains("vocab") || !model["vocab"].is_object())
    fail_file(file, "model.vocab", "BPE model needs an object \"vocab\" of token -> id");
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      fail_file(file, "model.vocab", "id of token \"" + token + "\" is not an id in [0, " +
                                         std::to_string(kMaxTokenId) + "]: " + id.dump());
    vocab_.emplace(token, id.get<int32_t>());
  }
  auto string_field = [&](const char* name) {
    const json& v = model.value(name, json());
    if (v.is_null()) return std::string();
    if (!v.is_string()) fail_file(file, std::string("model.") + name, "must be a string or null");
    return v.get<std::string>();
  };
  continuing_subword_prefix_ = string_field("continuing_subword_prefix");
  end_of_word_suffix_ = string_field("end_of_word_suffix");
  if (const std::string unk = string_field("unk_token"); !unk.empty()) {
    if (auto it = vocab_.find(unk); it != vocab_.end()) unk_id_ = it->second;
  }
  auto bool_field = [&](const char* name) {
    const json& v = model.value(name, json());
    return v.is_boolean() && v.get<bool>();
  };
  byte_fallback_ = bool_field("byte_fallback");
  fuse_unk_ = bool_field("fuse_unk");
  ignore_merges_ = bool_field("ignore_merges");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_fallback_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const json& merges = model.value("merges", json::array());
  if (!merges.is_array()) fail_file(file, "model.merges", "merges must be an array");
  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity <<= 1;
  merges_.assign(capacity, MergeEntry{kEmptySlot, 0, 0});
  merge_mask_ = capacity - 1;
  const size_t prefix_length = continuing_subword_prefix_.size();
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [left, right] = parse_merge(merges[i], file, i);
    const std::string where = "model.merges[" + std::to_string(i) + "]";
    auto find = [&](const std::string& token) {
      auto it = vocab_.find(token);
      if (it == vocab_.end()) fail_file(file, where, "merge token \"" + token + "\" is not in the vocabulary");
      return it->second;
    };
    const int32_t left_id = find(left), right_id = find(right);
    const int32_t merged_id =
        find(left + (right.size() >= prefix_length ? right.substr(prefix_length) : std::string()));
    // A pair listed twice keeps its last rank, as the HashMap of `tokenizers` does.
    const uint64_t key = pair_key(left_id, right_id);
    for (uint64_t slot = mix(key) & merge_mask_;; slot = (slot + 1) & merge_mask_) {
      if (merges_[slot].pair == kEmptySlot || merges_[slot].pair == key) {
        merges_[slot] = {key, static_cast<uint32_t>(i), merged_id};
        break;
      }
    }
  }
}

const BpeModel::MergeEntry* BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  for (uint64_t slot = mix(key) & merge_mask_;; slot = (slot + 1) & merge_mask_) {
    const MergeEntry& e = merges_[slot];
    if (e.pair == key) return &e;
    if (e.pair == kEmptySlot) return nullptr;
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity)
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // linked list over the surviving symbols; -1 at the ends
    bool removed;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, false});
  };
  int32_t pending_unk = -1;  // an unknown run waiting to be added (fuse_unk), or -1
  std::string scratch;
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = std::min(utf8_length(static_cast<unsigned char>(word[pos])), word.size() - pos);
    std::string_view piece = word.substr(pos, length);
    const bool is_first = pos == 0;
    pos += length;
    const bool is_last = pos == word.size();
    if ((!is_first && !continuing_subword_prefix_.empty()) ||
        (is_last && !end_of_word_suffix_.empty())) {
      scratch.assign(is_first ? "" : continuing_subword_prefix_).append(piece);
      if (is_last) scratch += end_of_word_suffix_;
      piece = scratch;
    }
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback_ &&
        std::all_of(piece.begin(), piece.end(),
                    [&](char c) { return byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0; })) {
      for (const char c : piece) add(byte_fallback_ids_[static_cast<unsigned char>(c)]);
      continue;
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unk token the character is dropped, as `tokenizers` does.
  }
  if (pending_unk >= 0) add(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged_id;
    bool operator<(const Candidate& o) const {  // std::priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (const MergeEntry* m = find_merge(symbols[i].id, symbols[i + 1].id))
      queue.push({m->rank, static_cast<int32_t>(i), m->merged_id});
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    const MergeEntry* current = find_merge(left.id, right.id);
    if (current == nullptr || current->merged_id != top.merged_id) continue;  // stale entry
    left.id = top.merged_id;
    left.next = right.next;
    symbols[right_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0)
      if (const MergeEntry* m = find_merge(symbols[left.prev].id, left.id))
        queue.push({m->rank, left.prev, m->merged_id});
    if (left.next >= 0)
      if (const MergeEntry* m = find_merge(left.id, symbols[left.next].id))
        queue.push({m->rank, top.pos, m->merged_id});
  }
  for (const Symbol& s : symbols)
    if (!s.removed) out.push_back(s.id);
}

}  // namespace marlin::tokenizer_detail
