// The caching allocator's bookkeeping for one device, without CUDA (tested on the CPU): which
// blocks are free for reuse, which are in use, and the private pools of CUDA graph captures.
//
// Why capture pools: a graph fixes the addresses of every buffer its kernels touch at capture
// time. A temporary freed during the capture would go back to the shared free list and could be
// handed to another tensor between replays, which the next replay would then overwrite. So while
// a capture is in progress on the device, freed blocks go to the capture's private free list,
// allocations are served from that list first, and a block allocated during the capture returns
// to it whenever it is freed while the pool lives. Releasing the pool (the graph is destroyed)
// hands its free blocks to the shared list, and its blocks still in use go there when freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

#include "marlin/allocator.h"

namespace marlin::detail {

class BlockPool {
 public:
  // A free block of exactly `size` (rounded) bytes, now in use; nullptr when none is cached.
  // During a capture the capture's own free blocks come first, then the shared list's.
  void* take_cached(size_t size);
  // Records a block the driver just allocated, now in use.
  void add_new(void* ptr, size_t size);
  // A block given back by its tensor; false (and nothing changes) for a pointer not in use here.
  bool give_back(void* ptr);
  // Removes and returns the shared list's free blocks (for cudaFree). The capture pools' blocks
  // are never returned: a live graph still uses them.
  std::vector<std::pair<void*, size_t>> drain_shared();

  // A capture starts: returns its pool's id (> 0). One capture per device at a time.
  uint64_t begin_capture();
  // The capture ends; its pool stays, owned by the graph, until release_pool.
  void end_capture();
  // The graph using the pool is gone: its free blocks join the shared list.
  void release_pool(uint64_t id);
  uint64_t capturing() const { return capturing_; }  // the capture's pool, 0 when none
  bool has_pool(uint64_t id) const { return pools_.count(id) != 0; }
  // Free bytes held by one pool (0 for an unknown or released one).
  size_t pool_free_bytes(uint64_t id) const;

  const AllocatorStats& stats() const { return stats_; }
  void reset_peak() { stats_.peak_allocated_bytes = stats_.allocated_bytes; }
  void count_device_malloc() { ++stats_.device_malloc_calls; }

 private:
  using FreeList = std::map<size_t, std::vector<void*>>;  // rounded size -> blocks
  struct Live {
    size_t size = 0;
    uint64_t pool = 0;  // the capture pool it was allocated in, 0: the shared list
  };
  static void* pop(FreeList& list, size_t size);
  void mark_live(void* ptr, size_t size);

  FreeList shared_;
  std::map<uint64_t, FreeList> pools_;
  std::unordered_map<void*, Live> live_;
  uint64_t capturing_ = 0, next_pool_ = 1;
  AllocatorStats stats_;
};

}  // namespace marlin::detail
