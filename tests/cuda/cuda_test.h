// What the GPU-only tests share: the fixture base (skipped without a CUDA device) and the
// relative-error bound of the attention ops against the CPU.
#pragma once

#include <gtest/gtest.h>

#include "marlin/device.h"
#include "marlin/dtype.h"
#include "marlin/tensor.h"

namespace marlin::testing {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  }
  const Device gpu = Device::cuda(0);
};

// Attention on the GPU against the CPU op in the same dtype: f32 nearly exact, the 16-bit
// dtypes a few roundings apart (the GPU keeps scores and probabilities in f32 differently).
inline double attention_tolerance(DType t) { return t == DType::f32 ? 2e-6 : t == DType::f16 ? 1e-3 : 8e-3; }

}  // namespace marlin::testing
