// CUDA streams without CUDA headers in the public API: a stream is an opaque handle plus its
// device. Each thread has a current stream per device (the legacy default stream unless set).
#pragma once

#include "marlin/device.h"

namespace marlin {

struct Stream {
  void* handle = nullptr;  // cudaStream_t; nullptr is the default stream
  int device = 0;

  // A new non-blocking stream on `device`; destroy it with destroy().
  static Stream create(int device);
  void destroy();
  void synchronize() const;
};

Stream current_stream(int device = 0);
void set_current_stream(const Stream& stream);
// Waits for all work on every stream of the device.
void device_synchronize(int device = 0);

// True while `stream` is being captured into a CUDA graph (false without the CUDA backend).
bool is_capturing(const Stream& stream);
// Throws "[op] cannot synchronize while a CUDA graph is being captured ..." when `stream` is
// being captured: a wait inside a capture invalidates it (and leaves the thread capturing), so
// code that must wait for the device checks first and names itself.
void check_not_capturing(const Stream& stream, const char* op);

// Makes a stream current for a scope and restores the previous one.
class StreamGuard {
 public:
  // With active == false the guard does nothing (for code that only sometimes switches).
  explicit StreamGuard(const Stream& stream, bool active = true)
      : previous_(current_stream(stream.device)), active_(active) {
    if (active_) set_current_stream(stream);
  }
  ~StreamGuard() {
    if (active_) set_current_stream(previous_);
  }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream previous_;
  bool active_;
};

}  // namespace marlin
