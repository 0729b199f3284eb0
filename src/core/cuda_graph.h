// Internal (CUDA builds only): capturing work into a CUDA graph without leaving the thread
// capturing when something fails. A capture left open makes every later CUDA call of the thread
// fail ("operation not permitted when stream is capturing"), so one failing capture would take
// every later test or request with it; these helpers always end the capture they begin.
#pragma once

#ifdef MARLIN_WITH_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "marlin/allocator.h"
#include "marlin/error.h"

namespace marlin {

// Begins a capture on `stream` (never the legacy default stream: it cannot be captured) and,
// with `device` >= 0, an allocator capture pool on that device (CudaCachingAllocator::
// begin_capture). If the scope is left before end() (an exception, a failed ASSERT in a test),
// the destructor ends the capture, destroys the partial graph and releases the pool.
class ScopedCapture {
 public:
  ScopedCapture(cudaStream_t stream, int device,
                cudaStreamCaptureMode mode = cudaStreamCaptureModeThreadLocal);
  ~ScopedCapture();
  ScopedCapture(const ScopedCapture&) = delete;
  ScopedCapture& operator=(const ScopedCapture&) = delete;

  // Ends the capture and returns the graph (the caller destroys it); the pool (pool(), 0
  // without one) then belongs to the caller, who releases it once the graph is gone. An
  // invalidated capture (a wait or another illegal call inside it) is an error naming `op`.
  cudaGraph_t end(const char* op = "ScopedCapture");
  uint64_t pool() const { return pool_; }

 private:
  cudaStream_t stream_;
  int device_;
  uint64_t pool_ = 0;
  bool open_ = false;
};

// A captured and instantiated graph with its allocator pool; destroys the executable graph, the
// graph, then (after waiting for the last launch) releases the pool.
class CapturedGraph {
 public:
  CapturedGraph() = default;
  ~CapturedGraph() { reset(); }
  CapturedGraph(CapturedGraph&& o) noexcept { *this = std::move(o); }
  CapturedGraph& operator=(CapturedGraph&& o) noexcept;
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  // Captures fn() on `stream` into a private allocator pool of `device` and instantiates it.
  // If fn throws, the capture is ended and the exception passed on.
  template <typename Fn>
  static CapturedGraph capture(cudaStream_t stream, int device, Fn&& fn, const char* op) {
    ScopedCapture scope(stream, device);
    std::forward<Fn>(fn)();
    CapturedGraph g;
    g.stream_ = stream;
    g.device_ = device;
    g.graph_ = scope.end(op);
    g.pool_ = scope.pool();
    g.instantiate(op);
    return g;
  }

  bool defined() const { return exec_ != nullptr; }
  void launch(const char* op) const;
  cudaGraph_t graph() const { return graph_; }
  uint64_t pool() const { return pool_; }
  void reset() noexcept;

 private:
  void instantiate(const char* op);

  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  uint64_t pool_ = 0;
};

}  // namespace marlin
#endif
