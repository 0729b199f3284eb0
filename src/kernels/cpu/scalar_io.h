// Internal to the CPU kernels: float views of f32/f16/bf16 buffers, the AVX2 switch, and A rows
// converted to f32 once per call.
#pragma once

#include <vector>

#include "marlin/tensor.h"
#include "marlin/thread_pool.h"

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define MARLIN_CPU_AVX2 1
// The decode GEMVs' wider path: 16 lanes, masked tails, 16-entry in-register tables.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MARLIN_CPU_AVX512 1
#endif
#endif

namespace marlin::cpu {

inline float load_scalar(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::f16: return half_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return bf16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

inline void store_scalar(void* base, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[i] = v; break;
    case DType::f16: static_cast<uint16_t*>(base)[i] = float_to_half_bits(v); break;
    default: static_cast<uint16_t*>(base)[i] = float_to_bf16_bits(v); break;
  }
}

// A contiguous f16/bf16/f32 tensor's values as f32, row-major.
inline std::vector<float> to_f32(const Tensor& a) {
  std::vector<float> out(static_cast<size_t>(a.numel()));
  const void* p = a.data_ptr();
  parallel_for(0, a.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[static_cast<size_t>(i)] = load_scalar(p, a.dtype(), i);
  });
  return out;
}

}  // namespace marlin::cpu
