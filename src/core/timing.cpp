// Benchmark timing: events recorded around each run so host overhead between runs is excluded.
#include "marlin/timing.h"

#include <algorithm>
#include <chrono>

#include "core/cuda_check.h"
#include "core/cuda_graph.h"
#include "marlin/error.h"
#include "marlin/stream.h"

namespace marlin {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<double> time_runs(Device device, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  times.reserve(static_cast<size_t>(iters));
  if (device.is_cpu()) {
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      const auto t1 = std::chrono::steady_clock::now();
      times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return times;
  }
#ifdef MARLIN_WITH_CUDA
  auto stream = static_cast<cudaStream_t>(current_stream(device.index).handle);
  std::vector<cudaEvent_t> events(static_cast<size_t>(iters) * 2);
  for (auto& e : events) MARLIN_CUDA_CHECK(cudaEventCreate(&e), "time_runs");
  for (int i = 0; i < iters; ++i) {
    MARLIN_CUDA_CHECK(cudaEventRecord(events[2 * i], stream), "time_runs");
    fn();
    MARLIN_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], stream), "time_runs");
  }
  MARLIN_CUDA_CHECK(cudaStreamSynchronize(stream), "time_runs");
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    MARLIN_CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]), "time_runs");
    times.push_back(ms);
  }
  for (auto& e : events) cudaEventDestroy(e);
  return times;
#else
  fail_no_cuda("time_runs");
#endif
}

double time_graph(Device device, int launches, int replays, const std::function<void(int)>& fn) {
  MARLIN_CHECK(device.is_cuda(), "time_graph", "graph timing needs a CUDA device, got ", device.str());
  MARLIN_CHECK(launches > 0 && replays > 0, "time_graph", "launches and replays must be positive, got ", launches,
               " and ", replays);
#ifdef MARLIN_WITH_CUDA
  // A fresh stream: the legacy default stream cannot be captured. Work queued before on the
  // current stream is done first (the new stream does not wait for it).
  current_stream(device.index).synchronize();
  const Stream stream = Stream::create(device.index);
  std::vector<double> times;
  try {
    StreamGuard guard(stream);
    fn(0);  // untimed: warms the allocator, so the capture finds every buffer cached
    stream.synchronize();
    const auto handle = static_cast<cudaStream_t>(stream.handle);
    CapturedGraph graph = CapturedGraph::capture(handle, device.index, [&] {
      for (int i = 0; i < launches; ++i) fn(i);
    }, "time_graph");
    times = time_runs(device, 1, replays, [&] { graph.launch("time_graph"); });  // waits for the stream
  } catch (...) {
    Stream(stream).destroy();
    throw;
  }
  Stream(stream).destroy();
  return median(times) / launches;
#else
  (void)fn;
  fail_no_cuda("time_graph");
#endif
}

}  // namespace marlin
