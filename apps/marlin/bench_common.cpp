// split, device_name, measure_copy_bandwidth and print_report for the bench subcommands.
#include "bench_common.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "marlin/tensor.h"
#include "marlin/timing.h"
#ifdef MARLIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace marlin::cli {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string device_name(Device device) {
#ifdef MARLIN_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.index) == cudaSuccess) return prop.name;
  }
#endif
  if (!device.is_cpu()) return device.str();
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

double measure_copy_bandwidth(Device device, int64_t bytes) {
  if (!device.is_cuda()) return 0;
  const int64_t n = bytes / 4;
  Tensor a = Tensor::empty({n}, DType::f32, device), b = Tensor::empty({n}, DType::f32, device);
  a.fill_bytes(1);
  const double ms = median(time_runs(device, 2, 10, [&] { b.copy_from(a); }));
  return 2.0 * static_cast<double>(a.nbytes()) / (ms * 1e-3) / 1e9;
}

void print_report(const nlohmann::json& report, bool as_json,
                  const std::function<void(const nlohmann::json&)>& print_text) {
  if (as_json) std::printf("%s\n", report.dump(2).c_str());
  else print_text(report);
  std::fflush(stdout);
}

double time_rotating(Device device, int iters, int copies, bool eager, const std::function<void(int)>& fn) {
  if (device.is_cuda() && !eager) return time_graph(device, std::max(iters, copies), 5, [&](int i) { fn(i % copies); });
  int i = 0;
  return median(time_runs(device, 3, iters, [&] { fn(i++ % copies); }));
}

}  // namespace marlin::cli
