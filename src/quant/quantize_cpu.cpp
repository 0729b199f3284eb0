// CPU reference quantizer and dequantizer over the canonical packed layout.
#include <algorithm>
#include <cmath>
#include <vector>

#include "marlin/quant.h"
#include "marlin/thread_pool.h"
#include "quant/formats.h"

namespace marlin {

std::string_view format_name(QuantFormat f) {
  switch (f) {
    case QuantFormat::int2: return "int2";
    case QuantFormat::fp4_e2m1: return "fp4_e2m1";
    case QuantFormat::fp8_e4m3: return "fp8_e4m3";
  }
  return "?";
}

QuantFormat format_from_bits(int bits) {
  switch (bits) {
    case 2: return QuantFormat::int2;
    case 4: return QuantFormat::fp4_e2m1;
    case 8: return QuantFormat::fp8_e4m3;
    default: fail("format_from_bits", "unsupported bit width ", bits, " (supported: 2, 4, 8)");
  }
}

bool is_valid_group_size(int g) { return g == 32 || g == 64 || g == 128 || g == 256; }

void check_quantized_layout(std::string_view op, const Tensor& packed, const Tensor& scales,
                            QuantFormat format, int64_t K, int64_t N, int group_size) {
  const int P = format_values_per_word(format);
  MARLIN_CHECK(is_valid_group_size(group_size), op, "group_size=", group_size,
               " is not supported (32, 64, 128 or 256)");
  MARLIN_CHECK(K > 0 && N > 0, op, "K=", K, " and N=", N, " must be positive");
  MARLIN_CHECK(K % group_size == 0, op, "K=", K, " is not a multiple of group_size=", group_size);
  MARLIN_CHECK(K % P == 0, op, "K=", K, " is not a multiple of ", P, " (", format_name(format),
               " packs ", P, " values per uint32)");
  MARLIN_CHECK(packed.defined() && scales.defined(), op, "packed weights and scales are required");
  MARLIN_CHECK(packed.dtype() == DType::u32, op, "packed weights must be u32, got ",
               packed.describe());
  MARLIN_CHECK(packed.shape() == Shape({K / P, N}), op, "packed weights must be [K/", P,
               ", N] = ", shape_str({K / P, N}), " for K=", K, ", N=", N, ", got ",
               packed.describe());
  MARLIN_CHECK(scales.dtype() == DType::f16, op, "scales must be f16, got ", scales.describe());
  MARLIN_CHECK(scales.shape() == Shape({K / group_size, N}), op, "scales must be [K/group_size, N] = ",
               shape_str({K / group_size, N}), " for K=", K, ", N=", N, ", group_size=",
               group_size, ", got ", scales.describe());
  MARLIN_CHECK(packed.is_contiguous() && scales.is_contiguous(), op,
               "packed weights and scales must be contiguous, got ", packed.describe(), " and ",
               scales.describe());
  MARLIN_CHECK(packed.device() == scales.device(), op, "packed weights on ",
               packed.device().str(), " but scales on ", scales.device().str());
}

QuantizedWeight QuantizedWeight::to(Device device) const {
  QuantizedWeight w = *this;
  w.packed = packed.to(device);
  w.scales = scales.to(device);
  w.tiled = Tensor();
  return w;
}

namespace {

// Loads row `k`, columns [n0, n0 + count) of a f32/f16/bf16 CPU tensor as floats.
void load_row(const Tensor& t, int64_t k, int64_t n0, int64_t count, float* out) {
  const int64_t base = k * t.strides()[0] + n0 * t.strides()[1];
  const int64_t step = t.strides()[1];
  switch (t.dtype()) {
    case DType::f32: {
      const float* p = t.data<float>() + base;
      for (int64_t i = 0; i < count; ++i) out[i] = p[i * step];
      break;
    }
    case DType::f16: {
      const uint16_t* p = static_cast<const uint16_t*>(t.data_ptr()) + base;
      for (int64_t i = 0; i < count; ++i) out[i] = half_bits_to_float(p[i * step]);
      break;
    }
    default: {
      const uint16_t* p = static_cast<const uint16_t*>(t.data_ptr()) + base;
      for (int64_t i = 0; i < count; ++i) out[i] = bf16_bits_to_float(p[i * step]);
      break;
    }
  }
}

}  // namespace

QuantizedWeight quantize_cpu(const Tensor& weight, QuantFormat format,
                             const QuantizeOptions& options) {
  constexpr const char* op = "quantize";
  MARLIN_CHECK(weight.defined() && weight.dim() == 2, op, "weight must be 2-D [K, N], got ",
               weight.describe());
  MARLIN_CHECK(weight.device().is_cpu(), op, "quantize_cpu needs a CPU weight, got ",
               weight.describe());
  MARLIN_CHECK(weight.dtype() == DType::f32 || weight.dtype() == DType::f16 ||
                   weight.dtype() == DType::bf16,
               op, "weight must be f32, f16 or bf16, got ", weight.describe());
  const int64_t K = weight.size(0), N = weight.size(1);
  const int g = options.group_size;
  const int P = format_values_per_word(format);
  const int bits = format_bits(format);
  MARLIN_CHECK(is_valid_group_size(g), op, "group_size=", g, " is not supported (32, 64, 128 or 256)");
  MARLIN_CHECK(K > 0 && N > 0 && K % g == 0, op, "K=", K, " (rows of ", weight.describe(),
               ") must be a positive multiple of group_size=", g);

  QuantizedWeight out;
  out.format = format;
  out.group_size = g;
  out.K = K;
  out.N = N;
  out.packed = Tensor::empty({K / P, N}, DType::u32);
  out.scales = Tensor::empty({K / g, N}, DType::f16);
  uint32_t* packed = out.packed.data<uint32_t>();
  uint16_t* scales = static_cast<uint16_t*>(out.scales.data_ptr());

  constexpr int64_t kColumnBlock = 64;
  const int64_t col_blocks = (N + kColumnBlock - 1) / kColumnBlock;
  // One task is a group of rows times a block of columns: transposed into a local buffer so
  // each column's group is contiguous.
  parallel_for(0, (K / g) * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(g * kColumnBlock));
    std::vector<float> column(static_cast<size_t>(g));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task / col_blocks;
      const int64_t n0 = (task % col_blocks) * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, N - n0);
      for (int i = 0; i < g; ++i) load_row(weight, group * g + i, n0, width, &rows[static_cast<size_t>(i * kColumnBlock)]);
      for (int64_t j = 0; j < width; ++j) {
        for (int i = 0; i < g; ++i) {
          const float w = rows[static_cast<size_t>(i * kColumnBlock + j)];
          MARLIN_CHECK(std::isfinite(w), op, "weight[", group * g + i, ", ", n0 + j,
                       "] is not finite (", w, ")");
          column[static_cast<size_t>(i)] = w;
        }
        auto load = [&](int i) { return column[static_cast<size_t>(i)]; };
        const float scale = quant::choose_group_scale(format, load, g, options);
        MARLIN_CHECK(std::isfinite(scale), op, "group ", group, " of column ", n0 + j,
                     " has absmax too large for an fp16 scale");
        scales[group * N + n0 + j] = float_to_half_bits(scale);
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int i = 0; i < g; i += P) {
          uint32_t word = 0;
          for (int v = 0; v < P; ++v)
            word |= quant::encode(format, column[static_cast<size_t>(i + v)] * inv) << (bits * v);
          packed[(group * g + i) / P * N + n0 + j] = word;
        }
      }
    }
  });
  return out;
}

Tensor dequantize_cpu(const QuantizedWeight& w, DType out_dtype) {
  constexpr const char* op = "dequantize";
  check_quantized_layout(op, w.packed, w.scales, w.format, w.K, w.N, w.group_size);
  MARLIN_CHECK(w.device().is_cpu(), op, "dequantize_cpu needs CPU weights, got ",
               w.packed.describe());
  MARLIN_CHECK(out_dtype == DType::f32 || out_dtype == DType::f16 || out_dtype == DType::bf16, op,
               "output dtype must be f32, f16 or bf16, got ", dtype_name(out_dtype));
  const int64_t K = w.K, N = w.N;
  const int P = format_values_per_word(w.format), bits = format_bits(w.format);
  const uint32_t mask = (1u << bits) - 1u;
  Tensor out = Tensor::empty({K, N}, out_dtype);
  const uint32_t* packed = w.packed.data<uint32_t>();
  const uint16_t* scales = static_cast<const uint16_t*>(w.scales.data_ptr());
  parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const uint32_t* row = packed + (k / P) * N;
      const uint16_t* srow = scales + (k / w.group_size) * N;
      const int shift = bits * static_cast<int>(k % P);
      for (int64_t n = 0; n < N; ++n) {
        const float v = quant::decode(w.format, (row[n] >> shift) & mask) * half_bits_to_float(srow[n]);
        const int64_t i = k * N + n;
        if (out_dtype == DType::f32) out.data<float>()[i] = v;
        else if (out_dtype == DType::f16) static_cast<uint16_t*>(out.data_ptr())[i] = float_to_half_bits(v);
        else static_cast<uint16_t*>(out.data_ptr())[i] = float_to_bf16_bits(v);
      }
    }
  });
  return out;
}

}  // namespace marlin
