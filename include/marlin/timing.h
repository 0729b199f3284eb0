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

}  // namespace marlin
