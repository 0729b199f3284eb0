// Shared pieces of the CUDA nn kernels: the activation dtype switch, block reductions and the
// 16-byte vectors of the row kernels' fast paths.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

// Elements of T in one 16-byte vector: the unit of the vectorized fast paths.
template <typename T>
inline constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// N consecutive elements moved as one aligned unit, so that a copy is one 8- or 16-byte load or
// store (two 16-byte ones for 32 bytes) instead of N scalar ones. The address must be aligned to
// alignof(Pack): every fast path checks its base pointers and row strides on the host.
template <typename T, int N>
struct alignas(N * sizeof(T) < 16 ? N * sizeof(T) : 16) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// RowLayout::offset with the dims loop unrolled: indexing the layout's arrays by a runtime dim
// would copy the kernel parameter to local memory (a stack frame and its loads in every kernel).
__device__ __forceinline__ int64_t row_offset(const kernels::RowLayout& layout, int64_t r) {
  if (layout.dims <= 1) return layout.dims == 0 ? 0 : r * layout.stride[0];  // the common cases
  int64_t off = 0;
#pragma unroll
  for (int d = kernels::RowLayout::kMaxDims - 1; d >= 0; --d) {
    if (d >= layout.dims) continue;
    const int64_t i = r % layout.size[d];
    r /= layout.size[d];
    off += i * layout.stride[d];
  }
  return off;
}

// Whether p and every row of `layout` start on a 16-byte boundary: then rows whose length is a
// multiple of kVec<T> are whole 16-byte vectors.
inline bool rows_aligned16(const void* p, const kernels::RowLayout& layout, size_t element_size) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  for (int d = 0; d < layout.dims; ++d)
    if ((layout.stride[d] * static_cast<int64_t>(element_size)) % 16 != 0) return false;
  return true;
}

// The value v takes once stored as T (Transformers' intermediate .to(dtype)).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// SwiGLU of one element, silu(g) * u: silu rounded to T as Transformers does, expf (not
// __expf) for the CPU reference's accuracy.
template <typename T>
__device__ __forceinline__ T silu_mul_value(float g, float u) {
  return from_float<T>(round_to<T>(g / (1.0f + expf(-g))) * u);
}

// RoPE's cos and sin of the angle pos * freq: the f32 angle of Transformers, precise sincosf,
// times attention_factor, rounded to T. Recomputed by every head's warp: a few dozen FMAs
// against a memory latency, and no barrier to share them.
template <typename T>
__device__ __forceinline__ void cos_sin(float pos, float freq, float attention_factor, float& c, float& s) {
  float sv, cv;
  sincosf(pos * freq, &sv, &cv);
  c = round_to<T>(cv * attention_factor);
  s = round_to<T>(sv * attention_factor);
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
