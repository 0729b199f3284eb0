// CUDA random fill from the counter-based generator: synthetic weights made on the GPU.
#include "core/cuda_check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/random_hash.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

template <typename T>
__global__ void random_normal_kernel(T* __restrict__ out, int64_t n, uint64_t seed, float stddev) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(stddev * random::normal(seed, static_cast<uint64_t>(i)));
}

}  // namespace

void random_normal(Tensor& out, uint64_t seed, float stddev) {
  const int64_t n = out.numel();
  if (n == 0) return;
  auto stream = static_cast<cudaStream_t>(current_stream(out.device().index).handle);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  switch (out.dtype()) {
    case DType::f32: random_normal_kernel<<<blocks, 256, 0, stream>>>(out.data<float>(), n, seed, stddev); break;
    case DType::f16: random_normal_kernel<<<blocks, 256, 0, stream>>>(static_cast<__half*>(out.data_ptr()), n, seed, stddev); break;
    default: random_normal_kernel<<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(out.data_ptr()), n, seed, stddev); break;
  }
  MARLIN_CUDA_CHECK_LAUNCH("random_normal");
}

}  // namespace marlin::cuda
