// Tensor views, copies, dtype conversion and error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "marlin/tensor.h"
#include "marlin/thread_pool.h"
#include "test_util.h"

namespace marlin {
namespace {

TEST(DType, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = half_bits_to_float(bits);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(f))));
      continue;
    }
    ASSERT_EQ(float_to_half_bits(f), bits) << "half 0x" << std::hex << h;
  }
}

TEST(DType, HalfKnownValuesAndRounding) {
  EXPECT_EQ(half_bits_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_bits_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_bits_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_bits_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_bits_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  // Halfway between 1 and 1 + 2^-10 rounds to even (1); just above rounds up.
  EXPECT_EQ(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(float_to_half_bits(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // overflow to inf
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: 0
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.5f, -25)), 0x0001);
  // Compare with a double-precision nearest search over random floats.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  for (int i = 0; i < 20000; ++i) {
    const float f = dist(rng) * (i % 2 ? 1.0f : 1e-4f);
    const uint16_t h = float_to_half_bits(f);
    const double got = half_bits_to_float(h);
    if (std::isinf(got)) {
      EXPECT_GE(std::fabs(f), 65520.0f);
      continue;
    }
    // No other half is strictly closer.
    const double up = half_bits_to_float(static_cast<uint16_t>(h + 1));
    const double down = half_bits_to_float(static_cast<uint16_t>(h - 1));
    const double e = std::fabs(got - f);
    if (std::isfinite(up)) {
      EXPECT_LE(e, std::fabs(up - f)) << f;
    }
    if ((h & 0x7fff) != 0) {
      EXPECT_LE(e, std::fabs(down - f)) << f;
    }
  }
}

TEST(DType, BFloat16Rounding) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(bf16_bits_to_float(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1.
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(NAN))));
}

TEST(Tensor, ShapeStridesAndViews) {
  Tensor t = testing::random_tensor({4, 6}, DType::f32, 1);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), Shape({6, 1}));
  EXPECT_TRUE(t.is_contiguous());
  Tensor col = t.narrow(1, 2, 3);
  EXPECT_EQ(col.shape(), Shape({4, 3}));
  EXPECT_FALSE(col.is_contiguous());
  EXPECT_EQ(col.item_as_double({1, 0}), t.item_as_double({1, 2}));
  Tensor tr = t.transpose(0, 1);
  EXPECT_EQ(tr.shape(), Shape({6, 4}));
  EXPECT_EQ(tr.item_as_double({5, 3}), t.item_as_double({3, 5}));
  Tensor c = tr.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(c.item_as_double({i, j}), t.item_as_double({j, i}));
  Tensor row = t.select(0, 2);
  EXPECT_EQ(row.shape(), Shape({6}));
  EXPECT_EQ(row.item_as_double({4}), t.item_as_double({2, 4}));
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), Shape({2, 12}));
  EXPECT_EQ(v.data_ptr(), t.data_ptr());  // shares storage
}

TEST(Tensor, CloneIsIndependentCopy) {
  Tensor t = testing::random_tensor({3, 5}, DType::f16, 2);
  Tensor c = t.clone();
  EXPECT_NE(c.data_ptr(), t.data_ptr());
  EXPECT_EQ(c.to_float_vector(), t.to_float_vector());
  c.fill_bytes(0);
  EXPECT_NE(c.to_float_vector(), t.to_float_vector());
}

TEST(Tensor, DTypeConversionRoundsToNearest) {
  Tensor t = Tensor::from_vector(std::vector<float>{1.0f, -2.5f, 1e-3f, 70000.0f, 448.0f, 500.0f},
                                 {6}, DType::f32);
  Tensor h = t.to(DType::f16);
  EXPECT_EQ(h.dtype(), DType::f16);
  EXPECT_EQ(h.item_as_double({0}), 1.0);
  EXPECT_EQ(h.item_as_double({1}), -2.5);
  EXPECT_NEAR(h.item_as_double({2}), 1e-3, 1e-6);
  EXPECT_TRUE(std::isinf(h.item_as_double({3})));
  Tensor f8 = t.to(DType::fp8_e4m3);
  EXPECT_EQ(f8.item_as_double({4}), 448.0);
  EXPECT_EQ(f8.item_as_double({5}), 448.0);  // saturates
  Tensor i = t.to(DType::i32);
  EXPECT_EQ(i.item_as_double({1}), -2.0);  // truncation toward zero
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor t = Tensor::empty({4, 6}, DType::f32);
  try {
    t.view({5, 5});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[Tensor::view]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4, 6]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.narrow(1, 4, 3), Error);
  EXPECT_THROW(t.select(0, 4), Error);
  EXPECT_THROW(t.transpose(0, 2), Error);
  EXPECT_THROW(t.data<uint16_t>(), Error);
  EXPECT_THROW(t.view_as(DType::f16), Error);
  EXPECT_THROW(Tensor::empty({-1, 2}, DType::f32), Error);
  EXPECT_THROW(Device::parse("gpu"), Error);
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  if (!cuda_available()) {
    EXPECT_THROW(Tensor::empty({2}, DType::f32, Device::cuda(0)), Error);
  }
}

TEST(Tensor, PoisonedAllocationsReadAsNaN) {
  testing::PoisonScope poison;
  Tensor t = Tensor::empty({8}, DType::f16);
  for (float v : t.to_float_vector()) EXPECT_TRUE(std::isnan(v));
}

TEST(ThreadPool, CoversRangeExactlyOnceAndPropagatesErrors) {
  std::vector<std::atomic<int>> hits(10007);
  parallel_for(0, 10007, 3, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  EXPECT_THROW(parallel_for(0, 1000, 1,
                            [](int64_t b, int64_t) {
                              if (b > 500) fail("test", "boom");
                            }),
               Error);
  // The pool still works after an error.
  std::atomic<int64_t> sum{0};
  parallel_for(0, 100, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

}  // namespace
}  // namespace marlin
