// Quantized weight formats (DESIGN.md, "Weight formats", normative) and the CPU reference
// quantizer and dequantizer. For y = x @ W with W [K, N]: packed uint32 [K/P, N] holding P codes
// per word along K, lowest bits first; scales fp16 [K/group_size, N].
#pragma once

#include <cstdint>
#include <string_view>

#include "marlin/tensor.h"

namespace marlin {

enum class QuantFormat : uint8_t {
  int2 = 2,      // symmetric, codes 0..3 -> -1.5, -0.5, 0.5, 1.5
  fp4_e2m1 = 4,  // sign bit 3, magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6
  fp8_e4m3 = 8,  // OCP "fn"
};

constexpr int format_bits(QuantFormat f) { return static_cast<int>(f); }
constexpr int format_values_per_word(QuantFormat f) { return 32 / format_bits(f); }
// Largest magnitude a code represents: absmax / this is the round-to-nearest scale.
constexpr float format_max_value(QuantFormat f) {
  return f == QuantFormat::fp4_e2m1 ? 6.0f : f == QuantFormat::fp8_e4m3 ? 448.0f : 1.5f;
}
std::string_view format_name(QuantFormat f);
// 2 -> int2, 4 -> fp4_e2m1, 8 -> fp8_e4m3; other widths are an error naming them.
QuantFormat format_from_bits(int bits);

enum class ScaleMethod : uint8_t {
  absmax,  // scale = absmax / max code value, round-to-nearest codes
  mse,     // per group, the clipping ratio with the least squared reconstruction error
};

struct QuantizeOptions {
  int group_size = 128;
  ScaleMethod method = ScaleMethod::absmax;
  // MSE search: ratios 1, 1 - step, ..., down to mse_min_ratio (1 is always tried, so the search
  // never does worse than absmax).
  float mse_min_ratio = 0.4f;
  int mse_steps = 25;
};

struct QuantizedWeight {
  Tensor packed;  // u32 [K / P, N]
  Tensor scales;  // f16 [K / group_size, N]
  QuantFormat format = QuantFormat::fp4_e2m1;
  int group_size = 128;
  int64_t K = 0, N = 0;
  // The device's tile layout for the tensor-core GEMM, made once by ops::prepare_for_gemm
  // (empty until then; dropped by to()). The canonical tensors above stay the source of truth.
  Tensor tiled;

  Device device() const { return packed.device(); }
  QuantizedWeight to(Device device) const;
  // Bytes of packed weights plus scales: what a GEMM must read.
  size_t nbytes() const { return packed.nbytes() + scales.nbytes(); }
};

// Checks a packed/scales pair against the layout; errors name `op` and the sizes.
void check_quantized_layout(std::string_view op, const Tensor& packed, const Tensor& scales,
                            QuantFormat format, int64_t K, int64_t N, int group_size);
bool is_valid_group_size(int group_size);

// CPU reference quantizer: weight [K, N] in f32, f16 or bf16 on the CPU.
QuantizedWeight quantize_cpu(const Tensor& weight, QuantFormat format,
                             const QuantizeOptions& options = {});
// CPU reference dequantizer: [K, N] in f32, f16 or bf16.
Tensor dequantize_cpu(const QuantizedWeight& weight, DType out_dtype = DType::f32);

}  // namespace marlin
