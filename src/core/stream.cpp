// Streams: a per-thread current stream per device; the default (nullptr) stream otherwise.
#include "marlin/stream.h"

#include <map>

#include "core/cuda_check.h"

namespace marlin {
namespace {
thread_local std::map<int, void*> current_streams;
}

Stream Stream::create(int device) {
#ifdef MARLIN_WITH_CUDA
  int previous = 0;
  MARLIN_CUDA_CHECK(cudaGetDevice(&previous), "Stream::create");
  MARLIN_CUDA_CHECK(cudaSetDevice(device), "Stream::create");
  cudaStream_t s = nullptr;
  MARLIN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "Stream::create");
  cudaSetDevice(previous);
  return Stream{s, device};
#else
  (void)device;
  fail_no_cuda("Stream::create");
#endif
}

void Stream::destroy() {
#ifdef MARLIN_WITH_CUDA
  if (handle) cudaStreamDestroy(static_cast<cudaStream_t>(handle));
#endif
  handle = nullptr;
}

void Stream::synchronize() const {
#ifdef MARLIN_WITH_CUDA
  check_not_capturing(*this, "Stream::synchronize");
  MARLIN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle)), "Stream::synchronize");
#else
  fail_no_cuda("Stream::synchronize");
#endif
}

Stream current_stream(int device) {
  auto it = current_streams.find(device);
  return Stream{it == current_streams.end() ? nullptr : it->second, device};
}

void set_current_stream(const Stream& stream) { current_streams[stream.device] = stream.handle; }

void device_synchronize(int device) {
#ifdef MARLIN_WITH_CUDA
  MARLIN_CUDA_CHECK(cudaSetDevice(device), "device_synchronize");
  check_not_capturing(current_stream(device), "device_synchronize");
  MARLIN_CUDA_CHECK(cudaDeviceSynchronize(), "device_synchronize");
#else
  (void)device;
  fail_no_cuda("device_synchronize");
#endif
}

bool is_capturing(const Stream& stream) {
#ifdef MARLIN_WITH_CUDA
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(static_cast<cudaStream_t>(stream.handle), &status);
  if (err == cudaErrorStreamCaptureImplicit) {  // the legacy stream while a blocking one captures
    cudaGetLastError();
    return true;
  }
  MARLIN_CUDA_CHECK(err, "is_capturing");
  return status != cudaStreamCaptureStatusNone;
#else
  (void)stream;
  return false;
#endif
}

void check_not_capturing(const Stream& stream, const char* op) {
  MARLIN_CHECK(!is_capturing(stream), op,
               "cannot synchronize while a CUDA graph is being captured on cuda:", stream.device,
               " (the captured code must stay on the device: no copy to or from the host, no "
               "wait, no value read back)");
}

}  // namespace marlin
