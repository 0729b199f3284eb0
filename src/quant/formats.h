// Scalar encode/decode of the quantized formats and the per-group scale search, shared by the
// CPU reference and the CUDA kernels so both produce the same codes and scales.
#pragma once

#include <cstdint>

#include "marlin/dtype.h"
#include "marlin/quant.h"

namespace marlin::quant {

MARLIN_HD float fp4_e2m1_to_float(uint32_t code) {
  // Magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6: for codes >= 2, (1 + m/2) * 2^(e-1).
  const uint32_t mag = code & 7u;
  const float v = mag < 2 ? 0.5f * static_cast<float>(mag)
                          : static_cast<float>(2 + (mag & 1u)) * static_cast<float>(1u << ((mag >> 1) - 1)) * 0.5f;
  return (code & 8u) ? -v : v;
}

// Nearest E2M1 code to x (already divided by the scale), ties to the even code, saturating at 6.
MARLIN_HD uint32_t float_to_fp4_e2m1(float x) {
  const float a = x < 0 ? -x : x;
  uint32_t mag;
  if (a <= 0.25f) mag = 0;
  else if (a < 0.75f) mag = 1;
  else if (a <= 1.25f) mag = 2;
  else if (a < 1.75f) mag = 3;
  else if (a <= 2.5f) mag = 4;
  else if (a < 3.5f) mag = 5;
  else if (a <= 5.0f) mag = 6;
  else mag = 7;
  return (x < 0 && mag != 0) ? (mag | 8u) : mag;
}

MARLIN_HD float int2_to_float(uint32_t code) { return static_cast<float>(code & 3u) - 1.5f; }

// Nearest of -1.5, -0.5, 0.5, 1.5 to x (already divided by the scale); ties go up. Comparisons
// only, so the CPU and CUDA quantizers agree bit for bit whatever the compilers contract.
MARLIN_HD uint32_t float_to_int2(float x) {
  return x < -1.0f ? 0u : x < 0.0f ? 1u : x < 1.0f ? 2u : 3u;
}

MARLIN_HD float decode(QuantFormat f, uint32_t code) {
  switch (f) {
    case QuantFormat::fp4_e2m1: return fp4_e2m1_to_float(code);
    case QuantFormat::fp8_e4m3: return fp8_e4m3_to_float(static_cast<uint8_t>(code));
    default: return int2_to_float(code);
  }
}

MARLIN_HD uint32_t encode(QuantFormat f, float x) {
  switch (f) {
    case QuantFormat::fp4_e2m1: return float_to_fp4_e2m1(x);
    case QuantFormat::fp8_e4m3: return float_to_fp8_e4m3(x);
    default: return float_to_int2(x);
  }
}

// Squared reconstruction error of a group at a given (fp16-rounded) scale.
template <typename Load>
MARLIN_HD float group_error(QuantFormat f, Load load, int n, float scale) {
  const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  float err = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float w = load(i);
    const float d = w - decode(f, encode(f, w * inv)) * scale;
    err += d * d;
  }
  return err;
}

// The fp16 scale of one group: absmax / max code value, or with `mse` the clipping ratio that
// minimises the squared error. `load(i)` returns the group's i-th weight as float.
template <typename Load>
MARLIN_HD float choose_group_scale(QuantFormat f, Load load, int n, const QuantizeOptions& opt) {
  float absmax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = load(i) < 0 ? -load(i) : load(i);
    absmax = a > absmax ? a : absmax;
  }
  const float qmax = format_max_value(f);
  float best_scale = round_to_half(absmax / qmax);
  if (opt.method != ScaleMethod::mse || absmax == 0.0f) return best_scale;
  float best_err = group_error(f, load, n, best_scale);
  const int steps = opt.mse_steps > 1 ? opt.mse_steps : 2;
  for (int s = 1; s < steps; ++s) {
    const float ratio = 1.0f - (1.0f - opt.mse_min_ratio) * static_cast<float>(s) / static_cast<float>(steps - 1);
    const float scale = round_to_half(absmax * ratio / qmax);
    const float err = group_error(f, load, n, scale);
    if (err < best_err) {
      best_err = err;
      best_scale = scale;
    }
  }
  return best_scale;
}

}  // namespace marlin::quant
