// GPU-only tests of the vision ops: every CUDA op against the CPU reference (kernels/cpu/vision.cpp)
// over odd sizes, down- and upscales, 1/3/4 channels, NCHW/NHWC, single images and batches, with
// outputs poisoned. Run on a machine with a GPU (ctest -L cuda).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_test.h"
#include "marlin/vision.h"
#include "test_util.h"

namespace marlin {
namespace {

class VisionCuda : public testing::CudaTest {};

// A seeded image: gradients, edges and noise (never flat), u8 or f32 in [0, 1].
Tensor random_image(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> noise(-40, 40);
  std::vector<uint8_t> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<uint8_t>(std::clamp(static_cast<int>((i * 7) % 251) + noise(rng), 0, 255));
  Tensor t = Tensor::from_vector(v, shape, DType::u8);
  return dtype == DType::u8 ? t : vision::uint8_to_float(t);
}

struct Geometry {
  int64_t n, c, h, w;
};

Shape image_shape(const Geometry& g, bool nhwc) {
  Shape s = nhwc ? Shape{g.h, g.w, g.c} : Shape{g.c, g.h, g.w};
  if (g.n > 0) s.insert(s.begin(), g.n);  // n == 0: a single rank-3 image
  return s;
}

std::string label(const Geometry& g, bool nhwc, DType dtype, const std::string& op) {
  return op + " n" + std::to_string(g.n) + " c" + std::to_string(g.c) + " " + std::to_string(g.h) + "x" +
         std::to_string(g.w) + (nhwc ? " NHWC " : " NCHW ") + std::string(dtype_name(dtype));
}

// |gpu - cpu| per element. Exact ops must agree bit for bit; resamples may differ where the
// GPU's fused multiply-adds move a value across an 8-bit rounding boundary (one level, or two
// when both passes flip), so those allow a few elements of `levels` and float noise elsewhere.
void expect_close(const Tensor& gpu_out, const Tensor& cpu_out, double tolerance, double level,
                  const std::string& what) {
  ASSERT_EQ(gpu_out.device(), Device::cuda(0)) << what;
  ASSERT_EQ(shape_str(gpu_out.shape()), shape_str(cpu_out.shape())) << what;
  ASSERT_EQ(gpu_out.dtype(), cpu_out.dtype()) << what;
  const std::vector<float> a = gpu_out.to_float_vector(), b = cpu_out.to_float_vector();
  size_t off = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i])) << what << ": element " << i << " not written";
    const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (e > tolerance) {
      ++off;
      ASSERT_LE(e, 2 * level + tolerance) << what << ": element " << i << " " << a[i] << " vs " << b[i];
    }
  }
  EXPECT_LE(static_cast<double>(off), 0.01 * static_cast<double>(a.size()) + 1) << what;
}

const std::vector<Geometry> kGeometries = {
    {0, 3, 37, 53}, {2, 3, 61, 29}, {0, 1, 33, 45}, {3, 4, 29, 41}, {1, 3, 135, 240},
    {0, 3, 7, 5},   {2, 3, 300, 17}, {1, 3, 513, 767},
};
const std::vector<std::pair<int64_t, int64_t>> kTargets = {{19, 20}, {64, 31}, {16, 50}, {224, 224}, {1, 1}, {77, 300}, {31, 47}};

TEST_F(VisionCuda, ResizesMatchCpu) {
  testing::PoisonScope poison;
  uint64_t seed = 1;
  for (const Geometry& g : kGeometries)
    for (DType dtype : {DType::u8, DType::f32})
      for (bool nhwc : {false, true}) {
        const Tensor cpu_in = random_image(image_shape(g, nhwc), dtype, seed++);
        const Tensor gpu_in = cpu_in.to(gpu);
        const double tol = dtype == DType::u8 ? 0.0 : 1e-5;
        const double level = dtype == DType::u8 ? 1.0 : 0.0;
        for (const auto& [h, w] : kTargets) {
          for (auto interp : {vision::Interpolation::bilinear, vision::Interpolation::bicubic}) {
            const std::string what = label(g, nhwc, dtype, "resize") + " -> " + std::to_string(h) + "x" +
                                     std::to_string(w) + (interp == vision::Interpolation::bilinear ? " bilinear" : " bicubic");
            expect_close(vision::resize(gpu_in, h, w, interp, nhwc), vision::resize(cpu_in, h, w, interp, nhwc), tol, level, what);
            const std::vector<float> mean(static_cast<size_t>(g.c), 0.45f), std(static_cast<size_t>(g.c), 0.27f);
            // One 8-bit level after normalization is 1 / (255 * 0.27).
            expect_close(vision::resize_and_normalize(gpu_in, h, w, mean, std, nhwc, interp),
                         vision::resize_and_normalize(cpu_in, h, w, mean, std, nhwc, interp), 1e-4,
                         dtype == DType::u8 ? 1.0 / (255 * 0.27) : 0.0, what + " +normalize");
          }
        }
      }
}

TEST_F(VisionCuda, ElementwiseOpsMatchCpuExactly) {
  testing::PoisonScope poison;
  uint64_t seed = 100;
  for (const Geometry& g : kGeometries)
    for (DType dtype : {DType::u8, DType::f32})
      for (bool nhwc : {false, true}) {
        const Tensor cpu_in = random_image(image_shape(g, nhwc), dtype, seed++);
        const Tensor gpu_in = cpu_in.to(gpu);
        const std::string what = label(g, nhwc, dtype, "");
        for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{5, 4}, {g.h + 3, g.w - 2}, {g.h, g.w}, {g.h + 8, g.w + 1}})
          if (w > 0)
            expect_close(vision::center_crop(gpu_in, h, w, nhwc), vision::center_crop(cpu_in, h, w, nhwc), 0, 0,
                         what + "center_crop " + std::to_string(h) + "x" + std::to_string(w));
        const std::vector<float> mean = {0.1f, 0.5f, 0.3f, 0.7f}, std = {0.2f, 0.3f, 0.25f, 0.5f};
        const std::vector<float> m(mean.begin(), mean.begin() + g.c), s(std.begin(), std.begin() + g.c);
        expect_close(vision::normalize(gpu_in, m, s, nhwc), vision::normalize(cpu_in, m, s, nhwc), 1e-5, 0, what + "normalize");
        if (dtype == DType::u8)
          expect_close(vision::uint8_to_float(gpu_in), vision::uint8_to_float(cpu_in), 0, 0, what + "uint8_to_float");
        expect_close(vision::to_rgb(gpu_in, nhwc), vision::to_rgb(cpu_in, nhwc), 1e-6, dtype == DType::u8 ? 1.0 : 0.0, what + "to_rgb");
        if (g.c >= 3) {
          expect_close(vision::rgb_to_bgr(gpu_in, nhwc), vision::rgb_to_bgr(cpu_in, nhwc), 0, 0, what + "rgb_to_bgr");
          for (int out_c : {1, 3})  // float rounding of the luma may cross an integer for u8
            expect_close(vision::rgb_to_grayscale(gpu_in, nhwc, out_c), vision::rgb_to_grayscale(cpu_in, nhwc, out_c),
                         1e-5, dtype == DType::u8 ? 1.0 : 0.0, what + "grayscale");
        }
        for (int64_t p : {1, 2, 5, 7}) {
          if (g.h < p || g.w < p) continue;
          // The largest top-left window that is a whole number of patches.
          const Tensor cpu_crop = vision::center_crop(cpu_in, g.h / p * p, g.w / p * p, nhwc);
          expect_close(vision::extract_patches(cpu_crop.to(gpu), p, nhwc), vision::extract_patches(cpu_crop, p, nhwc), 0, 0,
                       what + "extract_patches " + std::to_string(p));
        }
      }
}

TEST_F(VisionCuda, PipelinesMatchCpu) {
  testing::PoisonScope poison;
  const double clip_level = 1.0 / (255 * 0.26130258);
  uint64_t seed = 500;
  for (const Geometry& g : std::vector<Geometry>{{0, 3, 97, 131}, {2, 3, 61, 299}, {0, 4, 30, 900}, {0, 1, 1080, 1920}, {3, 3, 56, 56}})
    for (bool nhwc : {false, true}) {
      const Tensor cpu_in = random_image(image_shape(g, nhwc), DType::u8, seed++);
      const Tensor gpu_in = cpu_in.to(gpu);
      const std::string what = label(g, nhwc, DType::u8, "");
      for (int64_t max_pixels : {int64_t{28 * 28 * 1280}, vision::kOriginalApiQwen2VLMaxPixels, int64_t{28 * 28 * 16}}) {
        vision::Qwen2VLOptions o;
        o.nhwc = nhwc;
        o.max_pixels = max_pixels;
        const auto got = vision::preprocess_qwen2vl(gpu_in, o);
        const auto want = vision::preprocess_qwen2vl(cpu_in, o);
        EXPECT_EQ(got.image_grid_thw.to_float_vector(), want.image_grid_thw.to_float_vector()) << what;
        expect_close(got.pixel_values, want.pixel_values, 1e-4, clip_level, what + "qwen2vl max_pixels " + std::to_string(max_pixels));
      }
      vision::VitOptions v;
      v.nhwc = nhwc;
      for (auto interp : {vision::Interpolation::bilinear, vision::Interpolation::bicubic}) {
        v.interpolation = interp;
        expect_close(vision::preprocess_for_vit(gpu_in, v), vision::preprocess_for_vit(cpu_in, v), 1e-4,
                     1.0 / (255 * 0.224), what + "vit");
      }
      const Tensor f32 = vision::uint8_to_float(cpu_in);
      expect_close(vision::preprocess_for_vit(f32.to(gpu), v), vision::preprocess_for_vit(f32, v), 1e-4, 0, what + "vit f32");
    }
  // A list of differently sized images lands in one batch, in order.
  const Tensor a = random_image({3, 50, 70}, DType::u8, 7), b = random_image({3, 90, 40}, DType::u8, 8);
  const auto got = vision::preprocess_qwen2vl(std::vector<Tensor>{a.to(gpu), b.to(gpu)});
  const auto want = vision::preprocess_qwen2vl(std::vector<Tensor>{a, b});
  EXPECT_EQ(got.image_grid_thw.to_float_vector(), want.image_grid_thw.to_float_vector());
  expect_close(got.pixel_values, want.pixel_values, 1e-4, clip_level, "qwen2vl list");
}

TEST_F(VisionCuda, MixedDevicesAreErrors) {
  const Tensor a = random_image({3, 50, 70}, DType::u8, 7);
  EXPECT_THROW(vision::preprocess_for_vit(std::vector<Tensor>{a, a.to(gpu)}), Error);
  EXPECT_THROW(vision::preprocess_qwen2vl(std::vector<Tensor>{a.to(gpu), a}), Error);
}

}  // namespace
}  // namespace marlin
