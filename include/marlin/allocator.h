// The caching CUDA allocator: freed blocks go back to a size-keyed pool instead of cudaFree, so
// steady-state inference never calls cudaMalloc on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace marlin {

struct AllocatorStats {
  size_t allocated_bytes = 0;       // in use by tensors now
  size_t peak_allocated_bytes = 0;  // since the last reset_peak()
  size_t cached_bytes = 0;          // held in the pool, free for reuse
  uint64_t device_malloc_calls = 0; // cudaMalloc calls made so far
};

class CudaCachingAllocator {
 public:
  static CudaCachingAllocator& instance();

  // Rounds `nbytes` up to the pool's bucket; throws marlin::Error on out-of-memory after
  // releasing the cache once and retrying.
  void* allocate(size_t nbytes, int device);
  void deallocate(void* ptr, int device);
  // Returns every cached block to the driver.
  void empty_cache();
  AllocatorStats stats(int device) const;
  void reset_peak(int device);

  static size_t round_size(size_t nbytes);

 private:
  CudaCachingAllocator() = default;
  struct Impl;
  Impl& impl() const;
};

}  // namespace marlin
