// ops::quantize / ops::dequantize: argument checks, then the CPU reference or CUDA kernels.
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "marlin/ops.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace marlin::ops {

QuantizedWeight quantize(const Tensor& weight, QuantFormat format, const QuantizeOptions& options) {
  if (!weight.defined() || weight.device().is_cpu()) return quantize_cpu(weight, format, options);
#ifdef MARLIN_WITH_CUDA
  constexpr const char* op = "quantize";
  MARLIN_CHECK(weight.dim() == 2, op, "weight must be 2-D [K, N], got ", weight.describe());
  MARLIN_CHECK(weight.dtype() == DType::f32 || weight.dtype() == DType::f16 ||
                   weight.dtype() == DType::bf16,
               op, "weight must be f32, f16 or bf16, got ", weight.describe());
  const int64_t K = weight.size(0), N = weight.size(1);
  const int g = options.group_size;
  MARLIN_CHECK(is_valid_group_size(g), op, "group_size=", g, " is not supported (32, 64, 128 or 256)");
  MARLIN_CHECK(K > 0 && N > 0 && K % g == 0, op, "K=", K, " (rows of ", weight.describe(),
               ") must be a positive multiple of group_size=", g);
  MARLIN_CHECK(options.mse_steps >= 1 && options.mse_min_ratio > 0 && options.mse_min_ratio <= 1,
               op, "bad MSE search settings: steps=", options.mse_steps,
               ", min_ratio=", options.mse_min_ratio);
  QuantizedWeight out;
  out.format = format;
  out.group_size = g;
  out.K = K;
  out.N = N;
  out.packed = Tensor::empty({K / format_values_per_word(format), N}, DType::u32, weight.device());
  out.scales = Tensor::empty({K / g, N}, DType::f16, weight.device());
  cuda::quantize(weight.contiguous(), format, options, out);
  return out;
#else
  fail("quantize", "weight is on ", weight.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor dequantize(const QuantizedWeight& weight, DType out_dtype) {
  if (weight.device().is_cpu()) return dequantize_cpu(weight, out_dtype);
#ifdef MARLIN_WITH_CUDA
  constexpr const char* op = "dequantize";
  check_quantized_layout(op, weight.packed, weight.scales, weight.format, weight.K, weight.N,
                         weight.group_size);
  MARLIN_CHECK(out_dtype == DType::f32 || out_dtype == DType::f16 || out_dtype == DType::bf16, op,
               "output dtype must be f32, f16 or bf16, got ", dtype_name(out_dtype));
  Tensor out = Tensor::empty({weight.K, weight.N}, out_dtype, weight.device());
  cuda::dequantize(weight, out);
  return out;
#else
  fail("dequantize", "weights are on ", weight.device().str(), " but this build has no CUDA backend");
#endif
}

}  // namespace marlin::ops
