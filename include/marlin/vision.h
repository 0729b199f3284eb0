// Vision preprocessing (the original VisionMetal operations and pipelines) on the CPU and CUDA,
// chosen by the input tensor's device. Conventions are torchvision's (docs/VISION.md).
//
// Images are [C, H, W] or a batch [N, C, H, W] (nhwc = false), or [H, W, C] / [N, H, W, C]
// (nhwc = true), with C = 1, 3 or 4, in u8 (0..255) or f32. Outputs keep the input's layout and
// device. Resizes follow torchvision's resize(antialias=True): half-pixel centres, a filter
// widened by the downscale factor, taps cut at the border and renormalized; bicubic uses
// Keys' a = -0.5 (as PIL). A u8 image resizes to a u8 image (clamped and rounded, as torchvision
// does), an f32 image to f32 (neither clamped nor rounded).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "marlin/tensor.h"

namespace marlin::vision {

enum class Interpolation { bilinear, bicubic };

// u8 -> f32 in [0, 1] (value / 255); any shape.
Tensor uint8_to_float(const Tensor& image);

// The centre height x width window, as torchvision's center_crop: top = round((H - height) / 2)
// with Python's round-half-to-even; a crop larger than the image pads with zeros.
Tensor center_crop(const Tensor& image, int64_t height, int64_t width, bool nhwc = false);

Tensor resize(const Tensor& image, int64_t height, int64_t width, Interpolation interpolation,
              bool nhwc = false);
Tensor resize_bilinear(const Tensor& image, int64_t height, int64_t width, bool nhwc = false);
Tensor resize_bicubic(const Tensor& image, int64_t height, int64_t width, bool nhwc = false);

// (x - mean[c]) / std[c] in f32; a u8 image is first scaled to [0, 1]. mean and std hold one
// value per channel, or one value for all.
Tensor normalize(const Tensor& image, const std::vector<float>& mean, const std::vector<float>& std,
                 bool nhwc = false);

// normalize(resize(image)) in one fused pass over the input (for u8 input the resized value is
// rounded to 8 bits first, exactly as resizing a u8 image and then normalizing). f32 output.
Tensor resize_and_normalize(const Tensor& image, int64_t height, int64_t width,
                            const std::vector<float>& mean, const std::vector<float>& std,
                            bool nhwc = false, Interpolation interpolation = Interpolation::bilinear);

// Non-overlapping patch_size x patch_size patches in row-major order: [P, C*p*p] for an image,
// [N, P, C*p*p] for a batch (P = H/p * W/p). A patch is flattened as (C, p, p) for NCHW input
// and (p, p, C) for NHWC input. H and W must be multiples of patch_size.
Tensor extract_patches(const Tensor& image, int64_t patch_size, bool nhwc = false);

// Swap channels 0 and 2 (alpha, if any, stays last); same dtype.
Tensor rgb_to_bgr(const Tensor& image, bool nhwc = false);
Tensor bgr_to_rgb(const Tensor& image, bool nhwc = false);
// ITU-R 601-2 luma as torchvision: 0.2989 R + 0.587 G + 0.114 B (u8 rounded); alpha is
// dropped; num_output_channels 1 or 3 (the luma repeated).
Tensor rgb_to_grayscale(const Tensor& image, bool nhwc = false, int num_output_channels = 1);
// 3-channel RGB as PIL's convert("RGB"): gray is repeated, alpha dropped, RGB copied.
Tensor to_rgb(const Tensor& image, bool nhwc = false);

// ---- Pipelines -----------------------------------------------------------------------------

inline const std::vector<float> kClipMean = {0.48145466f, 0.4578275f, 0.40821073f};
inline const std::vector<float> kClipStd = {0.26862954f, 0.26130258f, 0.27577711f};
inline const std::vector<float> kImageNetMean = {0.485f, 0.456f, 0.406f};
inline const std::vector<float> kImageNetStd = {0.229f, 0.224f, 0.225f};

// max_pixels of the original VisionMetal.preprocess_qwen2vl signature; the default below is
// Transformers' Qwen2VLImageProcessor (what the released models were trained with).
inline constexpr int64_t kOriginalApiQwen2VLMaxPixels = 1024 * 1024;

struct Qwen2VLOptions {
  int64_t min_pixels = 56 * 56;
  int64_t max_pixels = 28 * 28 * 1280;
  int64_t patch_size = 14;
  int64_t merge_size = 2;
  int64_t temporal_patch_size = 2;  // a still image is repeated to fill the temporal patch
  std::vector<float> mean = kClipMean;
  std::vector<float> std = kClipStd;
  bool nhwc = false;
};

struct Qwen2VLInputs {
  Tensor pixel_values;    // f32 [sum of patches, C * temporal * patch * patch], input's device
  Tensor image_grid_thw;  // i64 [images, 3] (t, h, w) in patches, on the CPU
};

// Transformers' smart_resize: (height, width) rounded to multiples of `factor` with the pixel
// count brought within [min_pixels, max_pixels]. Errors for aspect ratios over 200 and for
// sides shorter than the factor.
std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, int64_t factor = 28,
                                         int64_t min_pixels = 56 * 56,
                                         int64_t max_pixels = 28 * 28 * 1280);

// Qwen2-VL / Qwen2.5-VL image processor: RGB, smart_resize, bicubic, rescale 1/255, CLIP
// mean/std, patches flattened exactly as Transformers orders them. `image` is one image or a
// batch of equally sized ones (u8 or f32 in 0..255 units of u8 / 0..1 for f32); each image
// gets its own grid row.
Qwen2VLInputs preprocess_qwen2vl(const Tensor& image, const Qwen2VLOptions& options = {});
Qwen2VLInputs preprocess_qwen2vl(const std::vector<Tensor>& images,
                                 const Qwen2VLOptions& options = {});

struct VitOptions {
  int64_t height = 224;
  int64_t width = 224;
  std::vector<float> mean = kImageNetMean;
  std::vector<float> std = kImageNetStd;
  Interpolation interpolation = Interpolation::bilinear;  // torchvision's Resize default
  bool nhwc = false;  // layout of the input; the output is always NCHW
};

// Resize (antialiased) to height x width and normalize: f32 [N, C, height, width]. `images`
// is one image, a batch, or a list of images of any sizes on one device.
Tensor preprocess_for_vit(const Tensor& images, const VitOptions& options = {});
Tensor preprocess_for_vit(const std::vector<Tensor>& images, const VitOptions& options = {});

}  // namespace marlin::vision
