// Element types of tensors, their sizes and names, and exact scalar conversions for the 16-bit
// and 8-bit float formats (usable from host code and, through MARLIN_HD, from CUDA kernels).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__CUDACC__)
#define MARLIN_HD __host__ __device__ __forceinline__
#else
#define MARLIN_HD inline
#endif

namespace marlin {

enum class DType : uint8_t {
  f32,
  f16,
  bf16,
  fp8_e4m3,  // OCP E4M3 "fn": bias 7, no infinities, max 448, NaN = S.1111.111
  u8,
  i32,
  u32,
  // Needed to hand out safetensors tensors without copying.
  f64,
  i64,
  i16,
  i8,
  boolean,
};

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32:
    case DType::u32: return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16: return 2;
    case DType::fp8_e4m3:
    case DType::u8:
    case DType::i8:
    case DType::boolean: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::u8: return "u8";
    case DType::i32: return "i32";
    case DType::u32: return "u32";
    case DType::f64: return "f64";
    case DType::i64: return "i64";
    case DType::i16: return "i16";
    case DType::i8: return "i8";
    case DType::boolean: return "bool";
  }
  return "?";
}

constexpr bool dtype_is_float(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::fp8_e4m3 ||
         t == DType::f64;
}

MARLIN_HD uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
MARLIN_HD float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 -> binary32, exact (subnormals, inf and NaN kept).
MARLIN_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_float(sign);
    // Subnormal: value = man * 2^-24, exactly representable in f32.
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// binary32 -> binary16 with round-to-nearest-even; overflow gives inf, NaN stays NaN.
MARLIN_HD uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow
  if (abs < 0x38800000u) {                        // below the smallest normal half (2^-14)
    if (abs < 0x33000000u) return sign;           // below half the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t r = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<uint16_t>(r);
}

MARLIN_HD float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

MARLIN_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

// OCP FP8 E4M3 ("fn") -> float, exact. 0x7f/0xff are NaN; there are no infinities.
MARLIN_HD float fp8_e4m3_to_float(uint8_t b) {
  const uint32_t exp = (b >> 3) & 0xfu, man = b & 0x7u;
  float v;
  if (exp == 0xf && man == 0x7) {
    v = bits_float(0x7fc00000u);
  } else if (exp == 0) {
    v = static_cast<float>(man) * 0.001953125f;  // man * 2^-9
  } else {
    v = bits_float(((exp + 120u) << 23) | (man << 20));
  }
  return (b & 0x80u) ? -v : v;
}

// float -> OCP FP8 E4M3 with round-to-nearest-even and saturation: finite values beyond the
// range and infinities become +-448, NaN becomes 0x7f (with the sign kept).
MARLIN_HD uint8_t float_to_fp8_e4m3(float f) {
  const uint32_t u = float_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7fu;
  if (abs >= 0x43e00000u) return sign | 0x7eu;  // >= 448
  if (abs < 0x3c800000u) {                      // below 2^-6: subnormal codes are round(|f| * 512)
    const float q = bits_float(abs) * 512.0f;   // exact scaling by a power of two
    uint32_t r = static_cast<uint32_t>(q);
    const float rem = q - static_cast<float>(r);
    if (rem > 0.5f || (rem == 0.5f && (r & 1u))) ++r;
    return sign | static_cast<uint8_t>(r);  // r == 8 is the smallest normal, code 0x08
  }
  const uint32_t exp = (abs >> 23) - 120u;  // rebias 127 -> 7
  const uint32_t man = abs & 0x7fffffu;
  uint32_t code = (exp << 3) | (man >> 20);
  const uint32_t rem = man & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (code & 1u))) ++code;
  if (code > 0x7eu) code = 0x7eu;
  return sign | static_cast<uint8_t>(code);
}

// Round a float to the nearest fp16 value and back: the value a stored fp16 scale will have.
MARLIN_HD float round_to_half(float f) { return half_bits_to_float(float_to_half_bits(f)); }

// Storage types for 16-bit floats on the host; kernels use CUDA's own types.
struct Half {
  uint16_t bits;
  static Half from_float(float f) { return Half{float_to_half_bits(f)}; }
  float to_float() const { return half_bits_to_float(bits); }
};
struct BFloat16 {
  uint16_t bits;
  static BFloat16 from_float(float f) { return BFloat16{float_to_bf16_bits(f)}; }
  float to_float() const { return bf16_bits_to_float(bits); }
};

}  // namespace marlin
