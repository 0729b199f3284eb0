// BlockPool: free lists and capture pools of the caching allocator (see block_pool.h).
#include "core/block_pool.h"

#include "marlin/error.h"

namespace marlin::detail {

void* BlockPool::pop(FreeList& list, size_t size) {
  auto it = list.find(size);
  if (it == list.end() || it->second.empty()) return nullptr;
  void* ptr = it->second.back();
  it->second.pop_back();
  return ptr;
}

void BlockPool::mark_live(void* ptr, size_t size) {
  live_[ptr] = Live{size, capturing_};
  stats_.allocated_bytes += size;
  if (stats_.allocated_bytes > stats_.peak_allocated_bytes)
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

void* BlockPool::take_cached(size_t size) {
  if (capturing_ != 0) {
    if (void* ptr = pop(pools_[capturing_], size)) {
      stats_.capture_pool_bytes -= size;
      mark_live(ptr, size);
      return ptr;
    }
  }
  void* ptr = pop(shared_, size);
  if (ptr == nullptr) return nullptr;
  stats_.cached_bytes -= size;
  mark_live(ptr, size);
  return ptr;
}

void BlockPool::add_new(void* ptr, size_t size) { mark_live(ptr, size); }

bool BlockPool::give_back(void* ptr) {
  auto it = live_.find(ptr);
  if (it == live_.end()) return false;
  const Live block = it->second;
  live_.erase(it);
  stats_.allocated_bytes -= block.size;
  // Its own pool while that lives; else the capture in progress (a block allocated before the
  // capture and freed during it may still be read by the graph); else the shared list.
  uint64_t pool = has_pool(block.pool) ? block.pool : capturing_;
  if (pool != 0) {
    pools_[pool][block.size].push_back(ptr);
    stats_.capture_pool_bytes += block.size;
  } else {
    shared_[block.size].push_back(ptr);
    stats_.cached_bytes += block.size;
  }
  return true;
}

std::vector<std::pair<void*, size_t>> BlockPool::drain_shared() {
  std::vector<std::pair<void*, size_t>> out;
  for (auto& [size, blocks] : shared_) {
    for (void* b : blocks) out.emplace_back(b, size);
    stats_.cached_bytes -= size * blocks.size();
    blocks.clear();
  }
  return out;
}

uint64_t BlockPool::begin_capture() {
  MARLIN_CHECK(capturing_ == 0, "CudaCachingAllocator::begin_capture",
               "a capture is already in progress on this device (pool ", capturing_, ")");
  capturing_ = next_pool_++;
  pools_[capturing_];
  return capturing_;
}

void BlockPool::end_capture() { capturing_ = 0; }

void BlockPool::release_pool(uint64_t id) {
  auto it = pools_.find(id);
  if (it == pools_.end()) return;
  if (capturing_ == id) capturing_ = 0;
  for (auto& [size, blocks] : it->second) {
    FreeList::mapped_type& into = shared_[size];
    into.insert(into.end(), blocks.begin(), blocks.end());
    stats_.capture_pool_bytes -= size * blocks.size();
    stats_.cached_bytes += size * blocks.size();
  }
  pools_.erase(it);
}

size_t BlockPool::pool_free_bytes(uint64_t id) const {
  auto it = pools_.find(id);
  if (it == pools_.end()) return 0;
  size_t n = 0;
  for (const auto& [size, blocks] : it->second) n += size * blocks.size();
  return n;
}

}  // namespace marlin::detail
