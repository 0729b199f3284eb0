// ops::random_normal: synthetic tensors made where they are used.
#include "kernels/cpu/cpu_kernels.h"
#include "marlin/ops.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace marlin::ops {

Tensor random_normal(const Shape& shape, DType dtype, Device device, uint64_t seed, float stddev) {
  MARLIN_CHECK(dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16, "random_normal",
               "dtype must be f32, f16 or bf16, got ", dtype_name(dtype));
  Tensor out = Tensor::empty(shape, dtype, device);
  if (device.is_cpu()) {
    cpu::random_normal(out, seed, stddev);
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::random_normal(out, seed, stddev);
  return out;
#else
  fail("random_normal", "device ", device.str(), " needs the CUDA backend");
#endif
}

}  // namespace marlin::ops
