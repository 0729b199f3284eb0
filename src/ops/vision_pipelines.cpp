// The preprocessing pipelines of vision-language models (marlin/vision.h): Qwen2-VL's image
// processor and the plain ViT resize + normalize. Each image is one fused resample pass
// (resize, 8-bit rounding, normalization and, for Qwen2-VL, the patch layout).
#include <algorithm>
#include <cmath>

#include "marlin/vision.h"
#include "ops/vision_internal.h"

namespace marlin::vision {

std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, int64_t factor,
                                         int64_t min_pixels, int64_t max_pixels) {
  MARLIN_CHECK(factor > 0 && min_pixels > 0 && max_pixels >= min_pixels, "smart_resize",
               "need factor > 0 and 0 < min_pixels <= max_pixels, got factor ", factor,
               ", min_pixels ", min_pixels, ", max_pixels ", max_pixels);
  // The original Qwen2-VL reference (qwen-vl-utils) rejects sides below the factor; newer
  // Transformers versions upscale them silently. We keep the check: such an image is almost
  // always a mistake (a thumbnail or a transposed tensor).
  MARLIN_CHECK(height >= factor && width >= factor, "smart_resize", "image ", height, "x", width,
               " (height x width) is smaller than the factor ", factor,
               " (patch_size * merge_size) in at least one side");
  const double ratio = static_cast<double>(std::max(height, width)) / static_cast<double>(std::min(height, width));
  MARLIN_CHECK(ratio <= 200.0, "smart_resize", "absolute aspect ratio must be at most 200, got ",
               ratio, " for an image of ", height, "x", width);
  const auto f = static_cast<double>(factor);
  // Python's round() rounds halves to even, as nearbyint does in the default rounding mode.
  int64_t h_bar = static_cast<int64_t>(std::nearbyint(static_cast<double>(height) / f)) * factor;
  int64_t w_bar = static_cast<int64_t>(std::nearbyint(static_cast<double>(width) / f)) * factor;
  const auto pixels = static_cast<double>(height * width);
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(pixels / static_cast<double>(max_pixels));
    h_bar = std::max(factor, static_cast<int64_t>(std::floor(static_cast<double>(height) / beta / f)) * factor);
    w_bar = std::max(factor, static_cast<int64_t>(std::floor(static_cast<double>(width) / beta / f)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / pixels);
    h_bar = static_cast<int64_t>(std::ceil(static_cast<double>(height) * beta / f)) * factor;
    w_bar = static_cast<int64_t>(std::ceil(static_cast<double>(width) * beta / f)) * factor;
  }
  return {h_bar, w_bar};
}

namespace {

// RGB as the processors expect it (gray repeated, RGBA composited on white).
ImageGeometry rgb_geometry(Tensor& image, bool nhwc, const char* op) {
  ImageGeometry g = detail::checked_geometry(image, nhwc, op);
  if (g.channels != 3) {
    image = to_rgb(image, nhwc);
    g.channels = 3;
  }
  return g;
}

// A rank-3 image as a batch of one.
Tensor as_batch(const Tensor& image) {
  if (image.dim() != 3) return image;
  Shape s = image.shape();
  s.insert(s.begin(), 1);
  return image.contiguous().view(s);
}

// The fused resample of one image (batch) into `out` with 8-bit rounding for u8 input.
ResamplePlan normalizing_plan(const Tensor& in, const ImageGeometry& g, int64_t height,
                              int64_t width, ResampleFilter filter, const std::vector<float>& mean,
                              const std::vector<float>& std, const char* op) {
  ResamplePlan plan;
  plan.in = g;
  plan.out = g;
  plan.out.height = height;
  plan.out.width = width;
  plan.filter = filter;
  plan.round_to_u8 = in.dtype() == DType::u8;
  plan.normalize = true;
  plan.value_scale = in.dtype() == DType::u8 ? 1.0f / 255.0f : 1.0f;
  detail::set_mean_std(plan, mean, std, g.channels, op);
  return plan;
}

void check_same_device(const std::vector<Tensor>& images, const char* op) {
  MARLIN_CHECK(!images.empty(), op, "no images given");
  for (const Tensor& t : images)
    MARLIN_CHECK(t.defined() && t.device() == images[0].device(), op,
                 "all images must be defined and on one device, got ",
                 t.defined() ? t.device().str() : "undefined", " and ", images[0].device().str());
}

}  // namespace

Qwen2VLInputs preprocess_qwen2vl(const std::vector<Tensor>& images, const Qwen2VLOptions& o) {
  const char* op = "preprocess_qwen2vl";
  check_same_device(images, op);
  MARLIN_CHECK(o.patch_size > 0 && o.merge_size > 0 && o.temporal_patch_size > 0, op,
               "patch_size, merge_size and temporal_patch_size must be positive, got ", o.patch_size,
               ", ", o.merge_size, ", ", o.temporal_patch_size);
  struct Item {
    Tensor image;
    ResamplePlan plan;
    int64_t rows;
  };
  std::vector<Item> items;
  int64_t total_rows = 0, total_images = 0;
  for (const Tensor& image : images) {
    Tensor in = as_batch(image);
    const ImageGeometry g = rgb_geometry(in, o.nhwc, op);
    const auto [h, w] = smart_resize(g.height, g.width, o.patch_size * o.merge_size, o.min_pixels,
                                     o.max_pixels);
    ResamplePlan plan = normalizing_plan(in, g, h, w, ResampleFilter::bicubic, o.mean, o.std, op);
    plan.target = ResampleTarget::qwen2vl_patches;
    plan.patch_size = o.patch_size;
    plan.merge_size = o.merge_size;
    plan.temporal_patch_size = o.temporal_patch_size;
    const int64_t rows = g.batch * (h / o.patch_size) * (w / o.patch_size);
    items.push_back({in, plan, rows});
    total_rows += rows;
    total_images += g.batch;
  }
  const int64_t cols = 3 * o.temporal_patch_size * o.patch_size * o.patch_size;
  Qwen2VLInputs result;
  result.pixel_values = Tensor::empty({total_rows, cols}, DType::f32, images[0].device());
  result.image_grid_thw = Tensor::empty({total_images, 3}, DType::i64);
  int64_t* grid = result.image_grid_thw.data<int64_t>();
  int64_t row = 0;
  for (const Item& item : items) {
    Tensor slice = result.pixel_values.narrow(0, row, item.rows);
    detail::run_resample(item.image, item.plan, slice);
    row += item.rows;
    for (int64_t n = 0; n < item.plan.in.batch; ++n, grid += 3) {
      grid[0] = 1;  // one temporal patch: the still image repeated temporal_patch_size times
      grid[1] = item.plan.out.height / o.patch_size;
      grid[2] = item.plan.out.width / o.patch_size;
    }
  }
  return result;
}

Qwen2VLInputs preprocess_qwen2vl(const Tensor& image, const Qwen2VLOptions& options) {
  return preprocess_qwen2vl(std::vector<Tensor>{image}, options);
}

Tensor preprocess_for_vit(const std::vector<Tensor>& images, const VitOptions& o) {
  const char* op = "preprocess_for_vit";
  check_same_device(images, op);
  MARLIN_CHECK(o.height > 0 && o.width > 0, op, "target size must be positive, got ", o.height, "x",
               o.width);
  const ResampleFilter filter =
      o.interpolation == Interpolation::bilinear ? ResampleFilter::bilinear : ResampleFilter::bicubic;
  std::vector<std::pair<Tensor, ResamplePlan>> items;
  int64_t total = 0;
  for (const Tensor& image : images) {
    Tensor in = as_batch(image);
    const ImageGeometry g = rgb_geometry(in, o.nhwc, op);
    ResamplePlan plan = normalizing_plan(in, g, o.height, o.width, filter, o.mean, o.std, op);
    plan.out.nhwc = false;  // models take NCHW
    items.emplace_back(in, plan);
    total += g.batch;
  }
  Tensor out = Tensor::empty({total, 3, o.height, o.width}, DType::f32, images[0].device());
  int64_t at = 0;
  for (const auto& [in, plan] : items) {
    Tensor slice = out.narrow(0, at, plan.in.batch);
    detail::run_resample(in, plan, slice);
    at += plan.in.batch;
  }
  return out;
}

Tensor preprocess_for_vit(const Tensor& images, const VitOptions& options) {
  return preprocess_for_vit(std::vector<Tensor>{images}, options);
}

}  // namespace marlin::vision
