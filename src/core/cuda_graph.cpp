// ScopedCapture and CapturedGraph (core/cuda_graph.h).
#ifdef MARLIN_WITH_CUDA
#include "core/cuda_graph.h"

#include "core/cuda_check.h"

namespace marlin {

ScopedCapture::ScopedCapture(cudaStream_t stream, int device, cudaStreamCaptureMode mode)
    : stream_(stream), device_(device) {
  constexpr const char* op = "ScopedCapture";
  MARLIN_CHECK(stream != nullptr, op, "the legacy default stream cannot be captured: capture on a "
               "stream of Stream::create (under a StreamGuard)");
  if (device_ >= 0) pool_ = CudaCachingAllocator::instance().begin_capture(device_);
  const cudaError_t err = cudaStreamBeginCapture(stream_, mode);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (pool_ != 0) {
      CudaCachingAllocator::instance().end_capture(device_);
      CudaCachingAllocator::instance().release_capture_pool(device_, pool_);
    }
    fail(op, "cudaStreamBeginCapture failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  }
  open_ = true;
}

ScopedCapture::~ScopedCapture() {
  if (!open_) return;
  // Left early: end the capture whatever state it is in (an invalidated capture ends with an
  // error and maybe a null graph), so the thread can make CUDA calls again.
  cudaGraph_t partial = nullptr;
  cudaStreamEndCapture(stream_, &partial);
  if (partial) cudaGraphDestroy(partial);
  cudaGetLastError();
  if (pool_ != 0) {
    // Nothing of the partial graph ever ran: its blocks can go back to the shared cache.
    CudaCachingAllocator::instance().end_capture(device_);
    CudaCachingAllocator::instance().release_capture_pool(device_, pool_);
  }
}

cudaGraph_t ScopedCapture::end(const char* op) {
  MARLIN_CHECK(open_, op, "the capture was already ended");
  open_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(stream_, &graph);
  if (pool_ != 0) CudaCachingAllocator::instance().end_capture(device_);
  if (err != cudaSuccess || graph == nullptr) {
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    if (pool_ != 0) CudaCachingAllocator::instance().release_capture_pool(device_, pool_);
    pool_ = 0;
    fail(op, "the CUDA graph capture failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
         "): a call inside it waited for the device or is not allowed in a capture");
  }
  return graph;
}

CapturedGraph& CapturedGraph::operator=(CapturedGraph&& o) noexcept {
  if (this == &o) return *this;
  reset();
  stream_ = std::exchange(o.stream_, nullptr);
  device_ = o.device_;
  graph_ = std::exchange(o.graph_, nullptr);
  exec_ = std::exchange(o.exec_, nullptr);
  pool_ = std::exchange(o.pool_, 0);
  return *this;
}

void CapturedGraph::instantiate(const char* op) {
  const cudaError_t err = cudaGraphInstantiate(&exec_, graph_, 0);
  if (err != cudaSuccess) {
    cudaGetLastError();
    exec_ = nullptr;
    reset();
    fail(op, "cudaGraphInstantiate failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  }
}

void CapturedGraph::launch(const char* op) const {
  MARLIN_CHECK(exec_ != nullptr, op, "no graph was captured");
  MARLIN_CUDA_CHECK(cudaGraphLaunch(exec_, stream_), op);
}

void CapturedGraph::reset() noexcept {
  // The last launch may still run: its buffers go back to the cache only once it is done.
  if (exec_ && stream_) cudaStreamSynchronize(stream_);
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
  if (pool_ != 0) CudaCachingAllocator::instance().release_capture_pool(device_, pool_);
  exec_ = nullptr;
  graph_ = nullptr;
  pool_ = 0;
}

}  // namespace marlin
#endif
