// Conformance of the weight formats with DESIGN.md's normative table and the OCP FP8 spec.
#include <gtest/gtest.h>

#include <cmath>

#include "marlin/quant.h"
#include "quant/formats.h"
#include "test_util.h"

namespace marlin {
namespace {

// OCP E4M3: bias 7, subnormals m/8 * 2^-6, max 448, NaN S.1111.111, no infinities.
double spec_fp8(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

TEST(Fp4, AllSixteenCodes) {
  const double magnitudes[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (uint32_t c = 0; c < 16; ++c) {
    const double expected = (c & 8) ? -magnitudes[c & 7] : magnitudes[c & 7];
    EXPECT_EQ(quant::fp4_e2m1_to_float(c), expected) << "code " << c;
    if (c != 8) {
      EXPECT_EQ(quant::float_to_fp4_e2m1(static_cast<float>(expected)), c) << "code " << c;
    }
  }
}

TEST(Fp4, EncodesNearestWithTiesToEvenAndSaturates) {
  // Ties go to the code with an even mantissa bit.
  EXPECT_EQ(quant::float_to_fp4_e2m1(0.25f), 0u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(0.75f), 2u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(1.25f), 2u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(1.75f), 4u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(2.5f), 4u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(3.5f), 6u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(5.0f), 6u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(100.0f), 7u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(-100.0f), 15u);
  EXPECT_EQ(quant::float_to_fp4_e2m1(-0.1f), 0u);  // rounds to zero: positive zero code
  // Every other value goes to a nearest code.
  for (float x = -7.0f; x <= 7.0f; x += 0.01f) {
    const float got = quant::fp4_e2m1_to_float(quant::float_to_fp4_e2m1(x));
    for (uint32_t c = 0; c < 16; ++c)
      EXPECT_LE(std::fabs(got - x), std::fabs(quant::fp4_e2m1_to_float(c) - x) + 1e-6f) << x;
  }
}

TEST(Fp8, All256CodesMatchTheSpec) {
  for (int b = 0; b < 256; ++b) {
    const double expected = spec_fp8(static_cast<uint8_t>(b));
    const float got = fp8_e4m3_to_float(static_cast<uint8_t>(b));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << b;
      EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(float_to_fp8_e4m3(got))));
      continue;
    }
    EXPECT_EQ(got, expected) << "code " << b;
    EXPECT_EQ(float_to_fp8_e4m3(got), b) << "code " << b;  // -0 included: the sign is kept
  }
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
}

TEST(Fp8, EncodesRoundToNearestEvenWithSaturation) {
  EXPECT_EQ(float_to_fp8_e4m3(448.0f), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(460.0f), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(1e6f), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(-1e6f), 0xfe);
  EXPECT_EQ(float_to_fp8_e4m3(INFINITY), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(NAN) & 0x7f, 0x7f);
  // 1.0625 is halfway between 1 (mantissa 0) and 1.125 (mantissa 1): even gives 1.
  EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(1.0625f)), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(float_to_fp8_e4m3(1.1875f)), 1.25f);  // tie to even mantissa 2
  // Subnormal ties: 1.5 * 2^-9 goes to 2 * 2^-9, 0.5 * 2^-9 to 0.
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.5f, -9)), 0x02);
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(0.5f, -9)), 0x00);
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(7.5f, -9)), 0x08);  // rounds up into the normals
  // Nearest against a brute-force search over all finite codes.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-450.0f, 450.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = dist(rng) * (i % 3 == 0 ? 1e-3f : 1.0f);
    const double got = fp8_e4m3_to_float(float_to_fp8_e4m3(x));
    double best = INFINITY;
    for (int b = 0; b < 256; ++b) {
      const double v = spec_fp8(static_cast<uint8_t>(b));
      if (!std::isnan(v)) best = std::min(best, std::fabs(v - x));
    }
    EXPECT_EQ(std::fabs(got - x), best) << x;
  }
}

TEST(Int2, LevelsAndNearest) {
  EXPECT_EQ(quant::int2_to_float(0), -1.5f);
  EXPECT_EQ(quant::int2_to_float(1), -0.5f);
  EXPECT_EQ(quant::int2_to_float(2), 0.5f);
  EXPECT_EQ(quant::int2_to_float(3), 1.5f);
  for (float x = -3.0f; x <= 3.0f; x += 0.01f) {
    const float got = quant::int2_to_float(quant::float_to_int2(x));
    for (uint32_t c = 0; c < 4; ++c)
      EXPECT_LE(std::fabs(got - x), std::fabs(quant::int2_to_float(c) - x) + 1e-6f) << x;
  }
}

TEST(Formats, BitsAndNames) {
  EXPECT_EQ(format_values_per_word(QuantFormat::fp4_e2m1), 8);
  EXPECT_EQ(format_values_per_word(QuantFormat::fp8_e4m3), 4);
  EXPECT_EQ(format_values_per_word(QuantFormat::int2), 16);
  EXPECT_EQ(format_from_bits(4), QuantFormat::fp4_e2m1);
  EXPECT_THROW(format_from_bits(3), Error);
}

}  // namespace
}  // namespace marlin
