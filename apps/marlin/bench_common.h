// What the `marlin bench` subcommands share: list parsing, the device's name and the
// device-to-device copy bandwidth their roofline fractions divide by.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "marlin/device.h"

namespace marlin::cli {

// "1,4,16" -> {"1", "4", "16"}; empty items are dropped.
std::vector<std::string> split(const std::string& s, char sep);

// The GPU's name (cudaGetDeviceProperties), or the CPU's model name from /proc/cpuinfo.
std::string device_name(Device device);

// GB/s of a device-to-device copy of `bytes` on a CUDA device: bytes read + written over the
// median time of 10 copies, the usual figure. 0 on the CPU.
double measure_copy_bandwidth(Device device, int64_t bytes = int64_t{1} << 30);

// Milliseconds of one fn(copy), the copy index cycling over `copies`: on CUDA, per launch of a
// captured graph of max(iters, copies) launches (median of 5 replays), as a decode step runs its
// kernels; eager (and on the CPU), the median of `iters` runs timed one at a time, which also
// counts the host's launch time whenever the GPU waits for it.
double time_rotating(Device device, int iters, int copies, bool eager, const std::function<void(int)>& fn);

// A benchmark's report on stdout: the JSON object (indented) with --json, else as text.
void print_report(const nlohmann::json& report, bool as_json,
                  const std::function<void(const nlohmann::json&)>& print_text);

}  // namespace marlin::cli
