// Caching CUDA allocator. Blocks are rounded to size buckets and kept in per-device free lists
// keyed by their rounded size (core/block_pool.h); an allocation takes a cached block of exactly
// that bucket or calls cudaMalloc. All work runs in stream order on one stream per device, so a
// block freed by one tensor can be handed to the next without synchronising.
#include "marlin/allocator.h"

#include <map>
#include <mutex>

#include "core/block_pool.h"
#include "core/cuda_check.h"

namespace marlin {

struct CudaCachingAllocator::Impl {
  mutable std::mutex mutex;
  std::map<int, detail::BlockPool> pools;
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

#ifdef MARLIN_WITH_CUDA
namespace {

// cudaMalloc is a "potentially unsafe" call while the thread captures a graph (the capture
// would fail): it is made in relaxed mode, as the capture then only records stream work.
cudaError_t device_malloc(void** ptr, size_t size, bool capturing) {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  if (capturing) cudaThreadExchangeStreamCaptureMode(&mode);
  const cudaError_t err = cudaMalloc(ptr, size);
  if (capturing) cudaThreadExchangeStreamCaptureMode(&mode);
  return err;
}

}  // namespace
#endif

void* CudaCachingAllocator::allocate(size_t nbytes, int device) {
#ifdef MARLIN_WITH_CUDA
  const size_t size = round_size(nbytes);
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  detail::BlockPool& pool = im.pools[device];
  if (void* cached = pool.take_cached(size)) return cached;
  const bool capturing = pool.capturing() != 0;
  int previous = 0;
  MARLIN_CUDA_CHECK(cudaGetDevice(&previous), "CudaCachingAllocator::allocate");
  MARLIN_CUDA_CHECK(cudaSetDevice(device), "CudaCachingAllocator::allocate");
  void* ptr = nullptr;
  cudaError_t err = device_malloc(&ptr, size, capturing);
  // Give the cached blocks back to the driver and try once more; not while capturing, where
  // cudaFree (which waits for the device) would break the capture.
  if (err == cudaErrorMemoryAllocation && !capturing) {
    cudaGetLastError();
    for (const auto& [block, bytes] : pool.drain_shared()) cudaFree(block);
    err = device_malloc(&ptr, size, false);
  }
  cudaSetDevice(previous);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("CudaCachingAllocator::allocate", "cudaMalloc of ", size, " bytes on cuda:", device,
         " failed (", cudaGetErrorString(err), "); in use by marlin: ",
         pool.stats().allocated_bytes, " bytes", capturing ? " (during a CUDA graph capture)" : "");
  }
  pool.count_device_malloc();
  pool.add_new(ptr, size);
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
  im.pools[device].give_back(ptr);  // not ours: ignored rather than corrupting the pool
}

void CudaCachingAllocator::empty_cache() {
#ifdef MARLIN_WITH_CUDA
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  for (auto& [device, pool] : im.pools)
    for (const auto& [block, bytes] : pool.drain_shared()) cudaFree(block);
#endif
}

AllocatorStats CudaCachingAllocator::stats(int device) const {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto it = im.pools.find(device);
  return it == im.pools.end() ? AllocatorStats{} : it->second.stats();
}

void CudaCachingAllocator::reset_peak(int device) {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  im.pools[device].reset_peak();
}

uint64_t CudaCachingAllocator::begin_capture(int device) {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  return im.pools[device].begin_capture();
}

void CudaCachingAllocator::end_capture(int device) {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  im.pools[device].end_capture();
}

void CudaCachingAllocator::release_capture_pool(int device, uint64_t pool) {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  im.pools[device].release_pool(pool);
}

size_t CudaCachingAllocator::capture_pool_free_bytes(int device, uint64_t pool) const {
  Impl& im = impl();
  std::lock_guard<std::mutex> lock(im.mutex);
  auto it = im.pools.find(device);
  return it == im.pools.end() ? 0 : it->second.pool_free_bytes(pool);
}

}  // namespace marlin
