// Shared pieces of the CUDA nn kernels: the activation dtype switch and block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/row_layout.h"

namespace marlin::cuda::nn {

// fn(T{}) with T = float, __half or __nv_bfloat16 by dtype (C++17: a tag instead of a
// template lambda).
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); break;
    case DType::f16: fn(__half{}); break;
    case DType::bf16: fn(__nv_bfloat16{}); break;
    default: fail(op, "expected f32, f16 or bf16, got ", dtype_name(dtype));
  }
}

using kernels::rows_of;

// The value v takes once stored as T (Transformers' intermediate .to(dtype)).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// Sum (or max) over the block; every thread gets the result. `scratch` holds 32 floats and may
// be reused right after the call.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  __syncthreads();  // scratch free again
  return v;
}

}  // namespace marlin::cuda::nn
