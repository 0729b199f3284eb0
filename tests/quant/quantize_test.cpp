// The CPU reference quantizer: packed layout bit by bit, reconstruction bounds, MSE scales.
#include <gtest/gtest.h>

#include <cmath>

#include "marlin/quant.h"
#include "quant/formats.h"
#include "test_util.h"

namespace marlin {
namespace {

const QuantFormat kFormats[] = {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2};

// Every packed value sits at bits [b*j, b*j+b) of word [k/P][n], lowest first: put a distinct
// code at one (k, n) at a time and find it exactly there.
TEST(Quantize, PackedBitPositions) {
  for (QuantFormat f : kFormats) {
    const int P = format_values_per_word(f), bits = format_bits(f);
    const int64_t K = 64, N = 3;
    for (int64_t k = 0; k < K; k += 5) {
      for (int64_t n = 0; n < N; ++n) {
        // All weights -max except (k, n) = +max, so their codes differ.
        std::vector<float> w(static_cast<size_t>(K * N), -1.0f);
        w[static_cast<size_t>(k * N + n)] = 1.0f;
        QuantizedWeight q = quantize_cpu(Tensor::from_vector(w, {K, N}, DType::f32), f, {.group_size = 32});
        const uint32_t hi = quant::encode(f, format_max_value(f));
        const uint32_t lo = quant::encode(f, -format_max_value(f));
        ASSERT_NE(hi, lo);
        const uint32_t mask = (1u << bits) - 1u;
        for (int64_t kk = 0; kk < K; ++kk)
          for (int64_t nn = 0; nn < N; ++nn) {
            const uint32_t word = q.packed.data<uint32_t>()[(kk / P) * N + nn];
            const uint32_t code = (word >> (bits * (kk % P))) & mask;
            ASSERT_EQ(code, (kk == k && nn == n) ? hi : lo)
                << format_name(f) << " k=" << kk << " n=" << nn;
          }
      }
    }
  }
}

// Round-to-nearest: |w - dequant(w)| <= half a quantization step times the scale, where a step
// is the gap between the two codes around w (saturation aside, which absmax scales avoid).
TEST(Quantize, ReconstructionWithinHalfAStep) {
  for (QuantFormat f : kFormats) {
    for (int g : {32, 64, 128, 256}) {
      const int64_t K = 512, N = 37;
      Tensor w = testing::random_tensor({K, N}, DType::f32, 11 + g);
      QuantizedWeight q = quantize_cpu(w, f, {.group_size = g});
      Tensor d = dequantize_cpu(q);
      // Sorted code values to find the gap around each weight.
      std::vector<float> levels;
      for (uint32_t c = 0; c < (1u << format_bits(f)); ++c) {
        const float v = quant::decode(f, c);
        if (std::isfinite(v)) levels.push_back(v);
      }
      std::sort(levels.begin(), levels.end());
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) {
          const double s = q.scales.item_as_double({k / g, n});
          const double x = w.item_as_double({k, n}) / s;
          auto hi = std::lower_bound(levels.begin(), levels.end(), static_cast<float>(x));
          double step = hi == levels.end() || hi == levels.begin() ? 0.0 : *hi - *(hi - 1);
          const double err = std::fabs(w.item_as_double({k, n}) - d.item_as_double({k, n}));
          // Absmax scales are rounded to fp16, so x may exceed the largest level by a hair.
          const double slack = 1e-3 * std::fabs(w.item_as_double({k, n}));
          EXPECT_LE(err, 0.5 * step * s + slack) << format_name(f) << " g=" << g << " k=" << k << " n=" << n;
        }
    }
  }
}

double reconstruction_mse(const Tensor& w, const QuantizedWeight& q) {
  const auto a = w.to_float_vector(), b = dequantize_cpu(q).to_float_vector();
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e += (a[i] - b[i]) * double(a[i] - b[i]);
  return e / static_cast<double>(a.size());
}

TEST(Quantize, MseScalesLowerTheErrorMostForInt2) {
  Tensor w = testing::random_tensor({1024, 64}, DType::bf16, 5);
  for (QuantFormat f : kFormats) {
    const double rtn = reconstruction_mse(w, quantize_cpu(w, f, {.group_size = 128}));
    const double mse = reconstruction_mse(w, quantize_cpu(w, f, {.group_size = 128, .method = ScaleMethod::mse}));
    EXPECT_LE(mse, rtn) << format_name(f);
    if (f == QuantFormat::int2) {
      EXPECT_LT(mse, 0.8 * rtn) << "INT2 MSE scales should cut the error by > 20%";
    }
    if (f == QuantFormat::fp4_e2m1) {
      EXPECT_LT(mse, 0.97 * rtn);
    }
  }
}

TEST(Quantize, ZeroGroupGivesZeroScaleAndZeros) {
  std::vector<float> w(64 * 4, 0.0f);
  w[5] = 3.0f;  // column 1 of row 1: group 0 of column 1 is nonzero
  QuantizedWeight q = quantize_cpu(Tensor::from_vector(w, {64, 4}, DType::f32), QuantFormat::fp4_e2m1, {.group_size = 32});
  Tensor d = dequantize_cpu(q);
  EXPECT_EQ(q.scales.item_as_double({0, 0}), 0.0);
  EXPECT_EQ(d.item_as_double({1, 1}), 3.0);
  EXPECT_EQ(d.item_as_double({0, 0}), 0.0);
}

TEST(Quantize, BadInputsAreClearErrors) {
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Tensor w = testing::random_tensor({96, 8}, DType::f32, 1);
  expect_error([&] { quantize_cpu(w, QuantFormat::fp4_e2m1, {.group_size = 64}); }, "K=96");
  expect_error([&] { quantize_cpu(w, QuantFormat::fp4_e2m1, {.group_size = 48}); }, "group_size=48");
  expect_error([&] { quantize_cpu(w.to(DType::i32), QuantFormat::fp4_e2m1, {.group_size = 32}); }, "i32");
  std::vector<float> bad(64 * 2, 1.0f);
  bad[7] = NAN;
  expect_error([&] { quantize_cpu(Tensor::from_vector(bad, {64, 2}, DType::f32), QuantFormat::fp8_e4m3, {.group_size = 32}); },
               "not finite");
  std::vector<float> huge(64 * 2, 1e9f);
  expect_error([&] { quantize_cpu(Tensor::from_vector(huge, {64, 2}, DType::f32), QuantFormat::int2, {.group_size = 32}); },
               "fp16 scale");
  QuantizedWeight q = quantize_cpu(testing::random_tensor({64, 8}, DType::f32, 2), QuantFormat::fp4_e2m1, {.group_size = 32});
  expect_error([&] { check_quantized_layout("op", q.packed, q.scales, QuantFormat::fp4_e2m1, 64, 9, 32); }, "N=9");
  expect_error([&] { check_quantized_layout("op", q.packed.view_as(DType::i32), q.scales, QuantFormat::fp4_e2m1, 64, 8, 32); }, "u32");
  expect_error([&] { check_quantized_layout("op", q.packed, q.scales, QuantFormat::fp4_e2m1, 64, 8, 64); }, "scales must be");
}

}  // namespace
}  // namespace marlin
