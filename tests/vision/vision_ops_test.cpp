// The CPU vision ops against torchvision fixtures (tools/make_vision_fixtures.py), in NCHW, NHWC
// and as batches; plus the ops whose reference is a plain index map.
#include <gtest/gtest.h>

#include "marlin/vision.h"
#include "test_util.h"
#include "vision/vision_test_util.h"

namespace marlin {
namespace {

using testing::difference;
using testing::load_vision_npy;
using testing::stack;
using testing::to_nchw;
using testing::to_nhwc;

// Runs one manifest op on an NCHW or NHWC image or batch; returns NCHW.
Tensor run_op(const nlohmann::json& c, const Tensor& image, bool nhwc) {
  const Tensor in = nhwc ? to_nhwc(image) : image;
  const std::string op = c["op"];
  Tensor out;
  if (op == "resize_bilinear") out = vision::resize_bilinear(in, c["size"][0], c["size"][1], nhwc);
  else if (op == "resize_bicubic") out = vision::resize_bicubic(in, c["size"][0], c["size"][1], nhwc);
  else if (op == "center_crop") out = vision::center_crop(in, c["size"][0], c["size"][1], nhwc);
  else if (op == "rgb_to_grayscale") out = vision::rgb_to_grayscale(in, nhwc, c["channels"]);
  else if (op == "normalize") out = vision::normalize(in, c["mean"], c["std"], nhwc);
  else if (op == "to_rgb") out = vision::to_rgb(in, nhwc);
  else ADD_FAILURE() << "unknown op " << op;
  return nhwc ? to_nchw(out) : out;
}

// u8 results may differ from torchvision by one level where a value sits at a rounding
// boundary (torch's u8 resize is fixed point); float results only by float rounding.
void expect_matches(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  if (want.dtype() == DType::u8) {
    const auto d = difference(got, want, 0.5);
    EXPECT_LE(d.max, 1.0) << what;
    EXPECT_LT(d.fraction, 0.05) << what;
  } else {
    EXPECT_LE(difference(got, want).max, 2e-5) << what;
  }
}

TEST(VisionOps, MatchTorchvisionFixtures) {
  testing::PoisonScope poison;
  int cases = 0;
  for (const auto& c : testing::vision_manifest()["ops"]) {
    Tensor image = load_vision_npy(c["input"]);
    if (c.value("float_input", false)) image = vision::uint8_to_float(image);
    const Tensor want = load_vision_npy(c["expected"]);
    const std::string what = c.dump();
    expect_matches(run_op(c, image, false), want, what + " NCHW");
    expect_matches(run_op(c, image, true), want, what + " NHWC");
    // A batch of the image and its copy gives the expected result twice.
    const Tensor batch = run_op(c, stack({image, image.clone()}), false);
    expect_matches(batch.select(0, 0).contiguous(), want, what + " batch[0]");
    expect_matches(batch.select(0, 1).contiguous(), want, what + " batch[1]");
    ++cases;
  }
  EXPECT_GE(cases, 40);
}

TEST(VisionOps, Uint8ToFloatScalesTo01) {
  const std::vector<uint8_t> v = {0, 1, 128, 254, 255, 17};
  const Tensor out = vision::uint8_to_float(Tensor::from_vector(v, {1, 2, 3}, DType::u8));
  ASSERT_EQ(out.dtype(), DType::f32);
  const auto f = out.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_FLOAT_EQ(f[i], v[i] / 255.0f);
}

TEST(VisionOps, ResizeAndNormalizeIsResizeThenNormalize) {
  const Tensor image = load_vision_npy("in_a.npy");
  for (auto interp : {vision::Interpolation::bilinear, vision::Interpolation::bicubic})
    for (const Tensor& in : {image, vision::uint8_to_float(image)})
      for (bool nhwc : {false, true}) {
        const Tensor x = nhwc ? to_nhwc(in) : in;
        const Tensor fused = vision::resize_and_normalize(x, 23, 71, vision::kClipMean, vision::kClipStd, nhwc, interp);
        const Tensor twostep = vision::normalize(vision::resize(x, 23, 71, interp, nhwc), vision::kClipMean,
                                                 vision::kClipStd, nhwc);
        EXPECT_LE(difference(fused, twostep).max, 1e-5) << dtype_name(in.dtype()) << " nhwc " << nhwc;
      }
}

TEST(VisionOps, ExtractPatchesOrder) {
  const Tensor image = load_vision_npy("in_a.npy").narrow(1, 0, 35).narrow(2, 0, 49).contiguous();  // 3x35x49
  const int64_t p = 7;
  const Tensor nchw = vision::extract_patches(image, p);
  const Tensor nhwc = vision::extract_patches(to_nhwc(image), p, true);
  ASSERT_EQ(shape_str(nchw.shape()), "[35, 147]");
  ASSERT_EQ(shape_str(nhwc.shape()), "[35, 147]");
  for (int64_t py = 0; py < 5; ++py)
    for (int64_t px = 0; px < 7; ++px)
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t y = 0; y < p; ++y)
          for (int64_t x = 0; x < p; ++x) {
            const double want = image.item_as_double({c, py * p + y, px * p + x});
            EXPECT_EQ(nchw.item_as_double({py * 7 + px, (c * p + y) * p + x}), want);
            EXPECT_EQ(nhwc.item_as_double({py * 7 + px, (y * p + x) * 3 + c}), want);
          }
  const Tensor batch = vision::extract_patches(stack({image, image}), p);
  ASSERT_EQ(shape_str(batch.shape()), "[2, 35, 147]");
  EXPECT_EQ(batch.select(0, 1).contiguous().to_float_vector(), nchw.to_float_vector());
  testing::expect_error([&] { vision::extract_patches(image, 6); }, "patches of size 6");
}

TEST(VisionOps, RgbBgrSwapsRedAndBlue) {
  const Tensor rgba = load_vision_npy("in_rgba.npy");
  const Tensor bgra = vision::rgb_to_bgr(rgba);
  for (int64_t c = 0; c < 4; ++c) {
    const int64_t from = c == 3 ? 3 : 2 - c;
    EXPECT_EQ(bgra.select(0, c).contiguous().to_float_vector(), rgba.select(0, from).contiguous().to_float_vector());
  }
  EXPECT_EQ(vision::bgr_to_rgb(bgra).to_float_vector(), rgba.to_float_vector());
  const Tensor nhwc = to_nhwc(rgba);
  EXPECT_EQ(to_nchw(vision::rgb_to_bgr(nhwc, true)).to_float_vector(), bgra.to_float_vector());
  testing::expect_error([&] { vision::rgb_to_bgr(load_vision_npy("in_gray.npy")); }, "3 or 4 channels");
}

TEST(VisionOps, BadImagesAreErrors) {
  const Tensor two = Tensor::from_vector(std::vector<uint8_t>(2 * 4 * 5, 7), {2, 4, 5}, DType::u8);
  testing::expect_error([&] { vision::resize_bilinear(two, 3, 3); }, "1, 3 or 4 channels, got 2");
  const Tensor five = Tensor::from_vector(std::vector<float>(4 * 5 * 5, 0.5f), {4, 5, 5}, DType::f32);
  testing::expect_error([&] { vision::normalize(five, {0.5f}, {0.5f}, true); }, "got 5");
  const Tensor empty = Tensor::empty({3, 0, 8}, DType::u8);
  testing::expect_error([&] { vision::resize_bicubic(empty, 4, 4); }, "zero-sized image");
  testing::expect_error([&] { vision::center_crop(Tensor::empty({1, 3, 8, 0}, DType::f32), 2, 2); }, "zero-sized image");
  const Tensor image = load_vision_npy("in_a.npy");
  testing::expect_error([&] { vision::resize_bilinear(image, 0, 5); }, "target size");
  testing::expect_error([&] { vision::resize_bilinear(image.to(DType::f16), 4, 5); }, "u8 or f32");
  testing::expect_error([&] { vision::normalize(image, {0.1f, 0.2f}, {1, 1}); }, "1 or 3 values");
  testing::expect_error([&] { vision::normalize(image, {0.1f}, {0.0f}); }, "nonzero");
  testing::expect_error([&] { vision::resize_bilinear(image.view({3, 37 * 53}), 4, 5); }, "expected an image");
  testing::expect_error([&] { vision::uint8_to_float(vision::uint8_to_float(image)); }, "expected a u8");
}

}  // namespace
}  // namespace marlin
