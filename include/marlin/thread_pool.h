// A fixed pool of worker threads for the CPU kernels. MARLIN_NUM_THREADS sets its size
// (default: the hardware's thread count).
#pragma once

#include <cstdint>
#include <functional>

namespace marlin {

int num_threads();

// Splits [begin, end) into contiguous chunks of at least `grain` items and runs
// fn(chunk_begin, chunk_end) on the pool; returns when all are done. Exceptions thrown by fn
// are rethrown in the caller. Nested calls run inline.
void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace marlin
