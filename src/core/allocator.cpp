// Caching CUDA allocator. Blocks are rounded to size buckets and kept in per-device free lists
// keyed by their rounded size; an allocation takes a cached block of exactly that bucket or
// calls cudaMalloc. All work runs in stream order on one stream per device, so a block freed by
// one tensor can be handed to the next without synchronising.
#include "marlin/allocator.h"

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda_check.h"

namespace marlin {

struct CudaCachingAllocator::Impl {
  struct DevicePool {
    std::map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
    std::unordered_map<void*, size_t> live;            // block -> rounded size
    AllocatorStats stats;
  };
  mutable std::mutex mutex;
  std::map<int, DevicePool> pools;
};

CudaCachingAllocator& CudaCachingAllocator::instance() {
  static CudaCachingAllocator allocator;
  return allocator;
}

CudaCachingAllocator::Impl& CudaCachingAllocator::impl() const {
  // Never destroyed: tensors freed during static destruction still find the pool.
  static Impl* impl = new Impl();
  return *impl;
}

size_t CudaCachingAllocator::round_size(size_t nbytes) {
  constexpr size_t kSmall = 512, kLarge = 2u << 20;
  if (nbytes == 0) nbytes = 1;
  if (nbytes < (1u << 20)) return (nbytes + kSmall - 1) / kSmall * kSmall;
  return (nbytes + kLarge - 1) / kLarge * kLarge;
}

void* CudaCachingAllocator::allocate(size_t nbytes, int device) {
#ifdef MARLIN_WITH_CUDA
  const size_t size = round_size(nbytes);
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto& pool = im.pools[device];
  void* ptr = nullptr;
  auto it = pool.free_blocks.find(size);
  if (it != pool.free_blocks.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    pool.stats.cached_bytes -= size;
  } else {
    int previous = 0;
    MARLIN_CUDA_CHECK(cudaGetDevice(&previous), "CudaCachingAllocator::allocate");
    MARLIN_CUDA_CHECK(cudaSetDevice(device), "CudaCachingAllocator::allocate");
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      // Give the cached blocks back to the driver and try once more.
      for (auto& [bucket, blocks] : pool.free_blocks) {
        for (void* b : blocks) cudaFree(b);
        pool.stats.cached_bytes -= bucket * blocks.size();
        blocks.clear();
      }
      err = cudaMalloc(&ptr, size);
    }
    cudaSetDevice(previous);
    if (err != cudaSuccess) {
      cudaGetLastError();
      fail("CudaCachingAllocator::allocate", "cudaMalloc of ", size, " bytes on cuda:", device,
           " failed (", cudaGetErrorString(err), "); in use by marlin: ",
           pool.stats.allocated_bytes, " bytes");
    }
    ++pool.stats.device_malloc_calls;
  }
  pool.live[ptr] = size;
  pool.stats.allocated_bytes += size;
  if (pool.stats.allocated_bytes > pool.stats.peak_allocated_bytes)
    pool.stats.peak_allocated_bytes = pool.stats.allocated_bytes;
  return ptr;
#else
  (void)nbytes;
  (void)device;
  fail_no_cuda("CudaCachingAllocator::allocate");
#endif
}

void CudaCachingAllocator::deallocate(void* ptr, int device) {
  if (!ptr) return;
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto& pool = im.pools[device];
  auto it = pool.live.find(ptr);
  if (it == pool.live.end()) return;  // not ours: ignore rather than corrupt the pool
  const size_t size = it->second;
  pool.live.erase(it);
  pool.stats.allocated_bytes -= size;
  pool.stats.cached_bytes += size;
  pool.free_blocks[size].push_back(ptr);
}

void CudaCachingAllocator::empty_cache() {
#ifdef MARLIN_WITH_CUDA
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  for (auto& [device, pool] : im.pools) {
    for (auto& [size, blocks] : pool.free_blocks) {
      for (void* b : blocks) cudaFree(b);
      blocks.clear();
    }
    pool.stats.cached_bytes = 0;
  }
#endif
}

AllocatorStats CudaCachingAllocator::stats(int device) const {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto it = im.pools.find(device);
  return it == im.pools.end() ? AllocatorStats{} : it->second.stats;
}

void CudaCachingAllocator::reset_peak(int device) {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto& stats = im.pools[device].stats;
  stats.peak_allocated_bytes = stats.allocated_bytes;
}

}  // namespace marlin
