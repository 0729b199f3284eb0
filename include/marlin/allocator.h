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
  size_t capture_pool_bytes = 0;    // free, but kept for the CUDA graphs that use them
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

  // CUDA graph capture (core/cuda_graph.h, DecodeGraph). Between begin_capture and end_capture
  // on a device, blocks freed there go to a private pool and allocations are served from it
  // first; a block allocated in the capture returns to the pool whenever it is freed, so no
  // buffer the graph replays into is handed to another tensor. The pool is kept until
  // release_capture_pool (after the graph is destroyed and its last replay has finished), when
  // its free blocks join the shared cache. empty_cache never frees a pool's blocks.
  // begin_capture returns the pool's id; one capture per device at a time.
  uint64_t begin_capture(int device);
  void end_capture(int device);
  void release_capture_pool(int device, uint64_t pool);
  // Free bytes a capture pool holds (0 once released).
  size_t capture_pool_free_bytes(int device, uint64_t pool) const;

  static size_t round_size(size_t nbytes);

 private:
  CudaCachingAllocator() = default;
  struct Impl;
  Impl& impl() const;
};

}  // namespace marlin
