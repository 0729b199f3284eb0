// Timing of device work for benchmarks: CUDA events on the current stream for CUDA devices,
// the steady clock for the CPU. Warm-up runs are not timed.
#pragma once

#include <functional>
#include <vector>

#include "marlin/device.h"

namespace marlin {

// Milliseconds of each timed run of fn.
std::vector<double> time_runs(Device device, int warmup, int iters, const std::function<void()>& fn);
double median(std::vector<double> values);

// Milliseconds per launch of fn(i), i = 0 .. launches - 1, captured once as one CUDA graph on a
// private stream and replayed `replays` times (after one untimed replay): the median replay
// divided by `launches`. This is device time back to back, as a captured decode step runs its
// kernels; time_runs, one launch between two events, also counts the host's launch overhead
// whenever the GPU waits for it (most small kernels). CUDA devices only.
double time_graph(Device device, int launches, int replays, const std::function<void(int)>& fn);

}  // namespace marlin
