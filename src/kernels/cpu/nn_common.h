// Scalar access to f32/f16/bf16 elements for the CPU nn kernels, and the dtype switch that
// instantiates a kernel body once per activation type.
#pragma once

#include <type_traits>

#include "kernels/row_layout.h"
#include "marlin/dtype.h"
#include "marlin/error.h"

namespace marlin::cpu::nn {

inline float load(float v) { return v; }
inline float load(Half v) { return v.to_float(); }
inline float load(BFloat16 v) { return v.to_float(); }

template <typename T>
inline T store(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return T::from_float(v);
}

// The value v takes once stored as T (Transformers' intermediate .to(dtype)).
template <typename T>
inline float round_to(float v) {
  return load(store<T>(v));
}

// body.template operator()<T>() with T = float, Half or BFloat16.
template <typename Body>
void dispatch_float(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::f32: body.template operator()<float>(); break;
    case DType::f16: body.template operator()<Half>(); break;
    case DType::bf16: body.template operator()<BFloat16>(); break;
    default: fail(op, "expected f32, f16 or bf16, got ", dtype_name(dtype));
  }
}

using kernels::rows_of;

// Elements of x as float, by index, whatever its dtype (weights, tables).
inline float load_any(const void* p, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f16: return load(static_cast<const Half*>(p)[i]);
    case DType::bf16: return load(static_cast<const BFloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

}  // namespace marlin::cpu::nn
