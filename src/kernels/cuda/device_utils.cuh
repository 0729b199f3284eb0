// Small device helpers shared by the CUDA kernels: 16-bit float loads/stores and the
// value-to-template switch for activation dtypes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "marlin/dtype.h"
#include "marlin/error.h"

namespace marlin::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// One 16-bit value (the low 16 bits of `bits`, T = __half or __nv_bfloat16) as float: for
// values unpacked from a wider register load without taking its address (which would put the
// register in local memory).
template <typename T>
__device__ __forceinline__ float bits16_to_float(uint32_t bits) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  else return __uint_as_float(bits << 16);  // bf16: the high half of an f32
}

// Bias of any float dtype, read as float; kind 0 means no bias.
enum class BiasKind : int { none = 0, f16 = 1, bf16 = 2, f32 = 3 };
__device__ __forceinline__ float load_bias(const void* bias, BiasKind kind, int64_t i) {
  switch (kind) {
    case BiasKind::f16: return __half2float(static_cast<const __half*>(bias)[i]);
    case BiasKind::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[i]);
    case BiasKind::f32: return static_cast<const float*>(bias)[i];
    default: return 0.0f;
  }
}

inline BiasKind bias_kind(DType t, bool defined) {
  if (!defined) return BiasKind::none;
  return t == DType::f16 ? BiasKind::f16 : t == DType::bf16 ? BiasKind::bf16 : BiasKind::f32;
}

// The max and the sum of v over the warp's 32 lanes, in every lane (a fixed butterfly order).
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One arrival at *counter (gpu scope), returning the count before it. The atomic releases the
// calling thread's earlier writes, and those of its warp or block ordered before it by a barrier
// (__syncwarp / __syncthreads); the thread that gets the last count acquires every earlier
// arrival's writes. __threadfence() + atomicAdd costs more: its fence is sequentially
// consistent (MEMBAR.SC.GPU), this one is a release/acquire pair (MEMBAR.ALL.GPU).
__device__ __forceinline__ unsigned arrive_acq_rel(unsigned* counter) {
  unsigned old;
  asm volatile("atom.add.acq_rel.gpu.u32 %0, [%1], 1;" : "=r"(old) : "l"(counter) : "memory");
  return old;
}

// True in every thread of the block that arrives last of `arrivals` at counter (reset for the
// next launch).
__device__ inline bool arrive_last(unsigned* counter, unsigned arrivals) {
  __shared__ bool last;
  __syncthreads();  // the block's writes, released by thread 0's arrival (arrive_acq_rel)
  if (threadIdx.x == 0) {
    last = arrive_acq_rel(counter) == arrivals - 1;
    if (last) *counter = 0;
  }
  __syncthreads();  // the last block's thread 0 acquired the others' writes
  return last;
}

}  // namespace marlin::cuda

// DISPATCH_FLOAT16(dtype, T, ...): runs the body with T = __half or __nv_bfloat16.
#define MARLIN_DISPATCH_FLOAT16(dtype, T, op, ...)                                  \
  do {                                                                              \
    if ((dtype) == ::marlin::DType::f16) {                                          \
      using T = __half;                                                             \
      __VA_ARGS__                                                                   \
    } else if ((dtype) == ::marlin::DType::bf16) {                                  \
      using T = __nv_bfloat16;                                                      \
      __VA_ARGS__                                                                   \
    } else {                                                                        \
      ::marlin::fail(op, "expected f16 or bf16, got ", ::marlin::dtype_name(dtype)); \
    }                                                                               \
  } while (0)
