// Internal: turns CUDA runtime and driver error codes into marlin::Error naming the op.
#pragma once

#include "marlin/error.h"

#ifdef MARLIN_WITH_CUDA
#include <cuda_runtime.h>

#define MARLIN_CUDA_CHECK(expr, op)                                                    \
  do {                                                                                 \
    cudaError_t marlin_err_ = (expr);                                                  \
    if (marlin_err_ != cudaSuccess)                                                    \
      ::marlin::fail(op, #expr, " failed: ", cudaGetErrorName(marlin_err_), " (",      \
                     cudaGetErrorString(marlin_err_), ")");                            \
  } while (0)

// After a kernel launch: reports a bad configuration or an earlier asynchronous fault.
#define MARLIN_CUDA_CHECK_LAUNCH(op) MARLIN_CUDA_CHECK(cudaGetLastError(), op)
#endif

namespace marlin {
// Throws the error every CUDA entry point gives in a build without the CUDA backend.
[[noreturn]] void fail_no_cuda(const char* op);
}  // namespace marlin
