// Device names and CUDA device discovery.
#include "marlin/device.h"

#include "core/cuda_check.h"
#include "marlin/error.h"

namespace marlin {

void fail_no_cuda(const char* op) {
  fail(op, "this build of marlin has no CUDA backend (configure with MARLIN_CUDA=ON and a CUDA "
           "toolkit)");
}

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5) {
    int index = 0;
    for (size_t i = 5; i < text.size(); ++i) {
      MARLIN_CHECK(text[i] >= '0' && text[i] <= '9' && index < 1000000, "Device::parse",
                   "bad device '", text, "': expected cpu, cuda or cuda:N");
      index = index * 10 + (text[i] - '0');
    }
    return cuda(index);
  }
  fail("Device::parse", "bad device '", text, "': expected cpu, cuda or cuda:N");
}

std::string Device::str() const {
  return is_cpu() ? "cpu" : "cuda:" + std::to_string(index);
}

bool cuda_compiled() {
#ifdef MARLIN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef MARLIN_WITH_CUDA
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

}  // namespace marlin
