// The vision ops (marlin/vision.h): arguments checked once here, then the CPU or CUDA kernel of
// the image's device.
#include <cmath>

#include "kernels/cpu/vision_cpu.h"
#include "marlin/vision.h"
#include "ops/vision_internal.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/vision_cuda.h"
#endif

// Calls fn(args...) of the backend that owns `device`.
#ifdef MARLIN_WITH_CUDA
#define MARLIN_VISION_DISPATCH(op, device, fn, ...) \
  do {                                              \
    if ((device).is_cpu()) cpu::fn(__VA_ARGS__);    \
    else cuda::fn(__VA_ARGS__);                     \
  } while (0)
#else
#define MARLIN_VISION_DISPATCH(op, device, fn, ...)                                   \
  do {                                                                                \
    if ((device).is_cpu()) cpu::fn(__VA_ARGS__);                                      \
    else fail(op, "device ", (device).str(), " needs the CUDA backend of marlin");    \
  } while (0)
#endif

namespace marlin::vision {
namespace detail {

ImageGeometry checked_geometry(Tensor& image, bool nhwc, const char* op) {
  MARLIN_CHECK(image.defined(), op, "image is undefined");
  MARLIN_CHECK(image.dim() == 3 || image.dim() == 4, op, "expected an image ",
               nhwc ? "[H, W, C] or a batch [N, H, W, C]" : "[C, H, W] or a batch [N, C, H, W]",
               ", got shape ", shape_str(image.shape()));
  MARLIN_CHECK(image.dtype() == DType::u8 || image.dtype() == DType::f32, op,
               "image dtype must be u8 or f32, got ", dtype_name(image.dtype()));
  const bool batched = image.dim() == 4;
  const int64_t off = batched ? 1 : 0;
  ImageGeometry g;
  g.batch = batched ? image.size(0) : 1;
  g.channels = image.size(nhwc ? off + 2 : off);
  g.height = image.size(nhwc ? off : off + 1);
  g.width = image.size(nhwc ? off + 1 : off + 2);
  g.nhwc = nhwc;
  MARLIN_CHECK(g.channels == 1 || g.channels == 3 || g.channels == 4, op,
               "images need 1, 3 or 4 channels, got ", g.channels, " in shape ",
               shape_str(image.shape()), nhwc ? " (NHWC)" : " (NCHW; pass nhwc=true for [H, W, C])");
  MARLIN_CHECK(g.batch > 0 && g.height > 0 && g.width > 0, op, "zero-sized image: shape ",
               shape_str(image.shape()));
  image = image.contiguous();
  return g;
}

Shape image_shape(const ImageGeometry& g, bool batched) {
  Shape s = g.nhwc ? Shape{g.height, g.width, g.channels} : Shape{g.channels, g.height, g.width};
  if (batched) s.insert(s.begin(), g.batch);
  return s;
}

void set_mean_std(ResamplePlan& plan, const std::vector<float>& mean, const std::vector<float>& std,
                  int64_t channels, const char* op) {
  const auto fits = [&](size_t n) { return n == 1 || static_cast<int64_t>(n) == channels; };
  MARLIN_CHECK(fits(mean.size()) && fits(std.size()), op, "mean and std need 1 or ", channels,
               " values, got ", mean.size(), " and ", std.size());
  for (int64_t c = 0; c < channels; ++c) {
    plan.mean[c] = mean[mean.size() == 1 ? 0 : static_cast<size_t>(c)];
    plan.std[c] = std[std.size() == 1 ? 0 : static_cast<size_t>(c)];
    MARLIN_CHECK(std::isfinite(plan.std[c]) && plan.std[c] != 0.0f && std::isfinite(plan.mean[c]),
                 op, "std must be finite and nonzero and mean finite, got mean ", mean, " std ", std);
  }
}

void run_resample(const Tensor& in, const ResamplePlan& plan, Tensor& out) {
  MARLIN_VISION_DISPATCH("resample", in.device(), vision_resample, in, plan, out);
}

}  // namespace detail

using detail::checked_geometry;
using detail::image_shape;

Tensor uint8_to_float(const Tensor& image) {
  MARLIN_CHECK(image.defined() && image.dtype() == DType::u8, "uint8_to_float",
               "expected a u8 tensor, got ", image.defined() ? image.describe() : "undefined");
  Tensor in = image.contiguous();
  Tensor out = Tensor::empty(in.shape(), DType::f32, in.device());
  if (in.numel() == 0) return out;
  MARLIN_VISION_DISPATCH("uint8_to_float", in.device(), vision_uint8_to_float, in, out);
  return out;
}

Tensor center_crop(const Tensor& image, int64_t height, int64_t width, bool nhwc) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, "center_crop");
  MARLIN_CHECK(height > 0 && width > 0, "center_crop", "crop size must be positive, got ", height,
               "x", width);
  // torchvision: pad symmetrically (extra pixel after) when the crop is larger, else start at
  // round((size - crop) / 2) with round-half-to-even.
  const auto anchor = [](int64_t size, int64_t crop) {
    return crop > size ? -((crop - size) / 2)
                       : static_cast<int64_t>(std::nearbyint(static_cast<double>(size - crop) / 2.0));
  };
  ImageGeometry og = g;
  og.height = height;
  og.width = width;
  Tensor out = Tensor::empty(image_shape(og, in.dim() == 4), in.dtype(), in.device());
  MARLIN_VISION_DISPATCH("center_crop", in.device(), vision_crop, in, g, anchor(g.height, height),
                         anchor(g.width, width), out, og);
  return out;
}

namespace {

void check_target_size(int64_t height, int64_t width, const char* op) {
  MARLIN_CHECK(height > 0 && width > 0, op, "target size must be positive, got ", height, "x", width);
}

}  // namespace

Tensor resize(const Tensor& image, int64_t height, int64_t width, Interpolation interpolation,
              bool nhwc) {
  const char* op = interpolation == Interpolation::bilinear ? "resize_bilinear" : "resize_bicubic";
  Tensor in = image;
  ResamplePlan plan;
  plan.in = checked_geometry(in, nhwc, op);
  check_target_size(height, width, op);
  plan.out = plan.in;
  plan.out.height = height;
  plan.out.width = width;
  plan.filter = interpolation == Interpolation::bilinear ? ResampleFilter::bilinear : ResampleFilter::bicubic;
  plan.round_to_u8 = in.dtype() == DType::u8;
  Tensor out = Tensor::empty(image_shape(plan.out, in.dim() == 4), in.dtype(), in.device());
  detail::run_resample(in, plan, out);
  return out;
}

Tensor resize_bilinear(const Tensor& image, int64_t height, int64_t width, bool nhwc) {
  return resize(image, height, width, Interpolation::bilinear, nhwc);
}

Tensor resize_bicubic(const Tensor& image, int64_t height, int64_t width, bool nhwc) {
  return resize(image, height, width, Interpolation::bicubic, nhwc);
}

Tensor normalize(const Tensor& image, const std::vector<float>& mean, const std::vector<float>& std,
                 bool nhwc) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, "normalize");
  ResamplePlan values;  // only its mean/std arrays
  detail::set_mean_std(values, mean, std, g.channels, "normalize");
  const float value_scale = in.dtype() == DType::u8 ? 1.0f / 255.0f : 1.0f;
  Tensor out = Tensor::empty(in.shape(), DType::f32, in.device());
  MARLIN_VISION_DISPATCH("normalize", in.device(), vision_normalize, in, g, value_scale, values.mean,
                         values.std, out);
  return out;
}

Tensor resize_and_normalize(const Tensor& image, int64_t height, int64_t width,
                            const std::vector<float>& mean, const std::vector<float>& std,
                            bool nhwc, Interpolation interpolation) {
  Tensor in = image;
  ResamplePlan plan;
  plan.in = checked_geometry(in, nhwc, "resize_and_normalize");
  check_target_size(height, width, "resize_and_normalize");
  plan.out = plan.in;
  plan.out.height = height;
  plan.out.width = width;
  plan.filter = interpolation == Interpolation::bilinear ? ResampleFilter::bilinear : ResampleFilter::bicubic;
  plan.round_to_u8 = in.dtype() == DType::u8;
  plan.normalize = true;
  plan.value_scale = in.dtype() == DType::u8 ? 1.0f / 255.0f : 1.0f;
  detail::set_mean_std(plan, mean, std, plan.in.channels, "resize_and_normalize");
  Tensor out = Tensor::empty(image_shape(plan.out, in.dim() == 4), DType::f32, in.device());
  detail::run_resample(in, plan, out);
  return out;
}

Tensor extract_patches(const Tensor& image, int64_t patch_size, bool nhwc) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, "extract_patches");
  MARLIN_CHECK(patch_size > 0 && g.height % patch_size == 0 && g.width % patch_size == 0,
               "extract_patches", "image ", g.height, "x", g.width,
               " is not a whole number of patches of size ", patch_size);
  const int64_t patches = (g.height / patch_size) * (g.width / patch_size);
  Shape shape{patches, g.channels * patch_size * patch_size};
  if (in.dim() == 4) shape.insert(shape.begin(), g.batch);
  Tensor out = Tensor::empty(shape, in.dtype(), in.device());
  MARLIN_VISION_DISPATCH("extract_patches", in.device(), vision_extract_patches, in, g, patch_size, out);
  return out;
}

namespace {

Tensor swap_red_blue(const Tensor& image, bool nhwc, const char* op) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, op);
  MARLIN_CHECK(g.channels >= 3, op, "needs 3 or 4 channels, got ", g.channels);
  const int channel_map[4] = {2, 1, 0, 3};
  Tensor out = Tensor::empty(in.shape(), in.dtype(), in.device());
  MARLIN_VISION_DISPATCH(op, in.device(), vision_select_channels, in, g, channel_map, out, g);
  return out;
}

}  // namespace

Tensor rgb_to_bgr(const Tensor& image, bool nhwc) { return swap_red_blue(image, nhwc, "rgb_to_bgr"); }
Tensor bgr_to_rgb(const Tensor& image, bool nhwc) { return swap_red_blue(image, nhwc, "bgr_to_rgb"); }

Tensor rgb_to_grayscale(const Tensor& image, bool nhwc, int num_output_channels) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, "rgb_to_grayscale");
  MARLIN_CHECK(num_output_channels == 1 || num_output_channels == 3, "rgb_to_grayscale",
               "num_output_channels must be 1 or 3, got ", num_output_channels);
  ImageGeometry og = g;
  og.channels = num_output_channels;
  Tensor out = Tensor::empty(image_shape(og, in.dim() == 4), in.dtype(), in.device());
  if (g.channels == 1) {  // already gray: copy (or repeat) the one channel
    const int channel_map[4] = {0, 0, 0, 0};
    MARLIN_VISION_DISPATCH("rgb_to_grayscale", in.device(), vision_select_channels, in, g, channel_map, out, og);
    return out;
  }
  MARLIN_VISION_DISPATCH("rgb_to_grayscale", in.device(), vision_grayscale, in, g, out, og);
  return out;
}

Tensor to_rgb(const Tensor& image, bool nhwc) {
  Tensor in = image;
  const ImageGeometry g = checked_geometry(in, nhwc, "to_rgb");
  ImageGeometry og = g;
  og.channels = 3;
  Tensor out = Tensor::empty(image_shape(og, in.dim() == 4), in.dtype(), in.device());
  MARLIN_VISION_DISPATCH("to_rgb", in.device(), vision_to_rgb, in, g, out, og);
  return out;
}

}  // namespace marlin::vision
