// The caching allocator's bookkeeping (core/block_pool.h) without a GPU: fake block addresses
// stand for cudaMalloc's. Capture pools: blocks freed during a capture stay private to it, its
// allocations come from it first, its blocks return to it while it lives, and releasing it hands
// everything to the shared cache; empty_cache's drain never takes a pool's blocks.
#include <gtest/gtest.h>

#include <cstdint>

#include "core/block_pool.h"
#include "marlin/error.h"

namespace marlin::detail {
namespace {

void* fake(uintptr_t n) { return reinterpret_cast<void*>(n * 4096); }

TEST(BlockPool, ReusesFreedBlocksOfTheSameBucket) {
  BlockPool p;
  EXPECT_EQ(p.take_cached(512), nullptr);
  p.add_new(fake(1), 512);
  EXPECT_EQ(p.stats().allocated_bytes, 512u);
  EXPECT_TRUE(p.give_back(fake(1)));
  EXPECT_FALSE(p.give_back(fake(1)));  // not in use any more: ignored
  EXPECT_FALSE(p.give_back(fake(99)));
  EXPECT_EQ(p.stats().cached_bytes, 512u);
  EXPECT_EQ(p.take_cached(1024), nullptr);
  EXPECT_EQ(p.take_cached(512), fake(1));
  EXPECT_EQ(p.stats().cached_bytes, 0u);
  EXPECT_EQ(p.stats().peak_allocated_bytes, 512u);
}

TEST(BlockPool, CaptureKeepsItsBlocksUntilReleased) {
  BlockPool p;
  p.add_new(fake(1), 512);  // before the capture: the shared cache
  p.give_back(fake(1));
  p.add_new(fake(2), 512);  // in use before the capture, freed during it
  const uint64_t pool = p.begin_capture();
  EXPECT_GT(pool, 0u);
  EXPECT_EQ(p.capturing(), pool);
  EXPECT_THROW(p.begin_capture(), Error);  // one capture per device

  // A temporary of the capture: taken from the shared cache, freed into the pool.
  void* temp = p.take_cached(512);
  EXPECT_EQ(temp, fake(1));
  p.give_back(temp);
  EXPECT_EQ(p.stats().cached_bytes, 0u);
  EXPECT_EQ(p.stats().capture_pool_bytes, 512u);
  p.give_back(fake(2));  // freed during the capture: the graph may still read it
  EXPECT_EQ(p.pool_free_bytes(pool), 1024u);
  // The capture's next allocation comes from its own blocks.
  void* out = p.take_cached(512);
  EXPECT_TRUE(out == fake(1) || out == fake(2));
  p.add_new(fake(3), 2048);  // a driver block during the capture: tagged with the pool
  p.end_capture();
  EXPECT_EQ(p.capturing(), 0u);

  // Between replays: nothing of the pool reaches other tensors.
  EXPECT_EQ(p.take_cached(512), nullptr);
  p.give_back(fake(3));  // allocated in the capture, freed while the pool lives: back to it
  EXPECT_EQ(p.take_cached(2048), nullptr);
  EXPECT_EQ(p.pool_free_bytes(pool), 512u + 2048u);
  EXPECT_TRUE(p.drain_shared().empty());  // empty_cache leaves the graph's blocks alone

  // The graph is destroyed: free blocks join the shared cache, the live output when freed.
  p.release_pool(pool);
  EXPECT_FALSE(p.has_pool(pool));
  EXPECT_EQ(p.stats().capture_pool_bytes, 0u);
  EXPECT_EQ(p.stats().cached_bytes, 512u + 2048u);
  p.give_back(out);
  EXPECT_EQ(p.stats().cached_bytes, 1024u + 2048u);
  EXPECT_EQ(p.drain_shared().size(), 3u);
  EXPECT_EQ(p.stats().cached_bytes, 0u);
  EXPECT_EQ(p.stats().allocated_bytes, 0u);
}

TEST(BlockPool, AnAbandonedCaptureReleasesItsPool) {
  BlockPool p;
  const uint64_t first = p.begin_capture();
  p.add_new(fake(1), 512);
  p.give_back(fake(1));
  p.release_pool(first);  // what ScopedCapture does when the capture fails
  EXPECT_EQ(p.capturing(), 0u);
  EXPECT_EQ(p.take_cached(512), fake(1));
  const uint64_t second = p.begin_capture();
  EXPECT_NE(second, first);
  p.end_capture();
  p.release_pool(second);
  p.release_pool(second);  // twice: nothing happens
}

}  // namespace
}  // namespace marlin::detail
