// Shapes, resampling filters and index maps shared by the CPU and CUDA vision kernels, so both
// backends compute the same filter windows (torchvision's antialiased resize) and the same
// patch orders. Included by .cu files: keep it C++17.
#pragma once

#include <cmath>
#include <cstdint>

#include "marlin/dtype.h"

namespace marlin::vision {

// A contiguous image batch in NCHW or NHWC order.
struct ImageGeometry {
  int64_t batch = 1, channels = 1, height = 1, width = 1;
  bool nhwc = false;

  MARLIN_HD int64_t numel() const { return batch * channels * height * width; }
  MARLIN_HD int64_t index(int64_t n, int64_t c, int64_t y, int64_t x) const {
    return nhwc ? ((n * height + y) * width + x) * channels + c
                : ((n * channels + c) * height + y) * width + x;
  }
};

enum class ResampleFilter : int { bilinear = 0, bicubic = 1 };

// What a resample writes: an image in `out`'s layout, or Qwen2-VL's flattened patches.
enum class ResampleTarget : int { image = 0, qwen2vl_patches = 1 };

// One resize with its fused value transform. With round_to_u8 (u8 images) both passes store
// 8-bit values, as PIL and torchvision's CPU u8 path do (the row pass is an 8-bit image before
// the column pass); the value v (in the input's units) is then optionally normalized:
// (v * value_scale - mean[c]) / std[c].
struct ResamplePlan {
  ImageGeometry in;
  ImageGeometry out;  // same batch and channels as `in`; nhwc ignored for Qwen2-VL patches
  ResampleFilter filter = ResampleFilter::bilinear;
  bool round_to_u8 = false;
  bool normalize = false;
  float value_scale = 1.0f;
  float mean[4] = {0, 0, 0, 0};
  float std[4] = {1, 1, 1, 1};
  ResampleTarget target = ResampleTarget::image;
  int64_t patch_size = 14, merge_size = 2, temporal_patch_size = 2;
};

// Filters of torchvision's antialiased path (aten UpSampleKernel.cpp, itself from PIL's
// Resample.c): triangle, and Keys' cubic with a = -0.5.
MARLIN_HD float filter_support(ResampleFilter f) { return f == ResampleFilter::bilinear ? 1.0f : 2.0f; }

MARLIN_HD float filter_weight(ResampleFilter f, float x) {
  x = fabsf(x);
  if (f == ResampleFilter::bilinear) return x < 1.0f ? 1.0f - x : 0.0f;
  const float a = -0.5f;
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a;
  return 0.0f;
}

// The input taps of one output index along one axis: inputs [begin, begin + size) with weights
// filter_weight((begin + j - center + 0.5) * inv_scale), to be divided by their sum. Half-pixel
// centres (align_corners = False); a downscale widens the filter by the scale factor
// (antialiasing); taps outside the image are dropped.
struct FilterWindow {
  int64_t begin;
  int64_t size;
  float center;
  float inv_scale;
};

// The mix of float and double mirrors torch's code exactly (float centre, window bounds and
// tap positions in double): besides matching torch, no step can be contracted into an FMA, so
// every compiler and both backends pick the same window.
MARLIN_HD FilterWindow filter_window(ResampleFilter f, int64_t out_index, int64_t in_size,
                                     int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float support = filter_support(f) * (scale >= 1.0f ? scale : 1.0f);
  FilterWindow w;
  w.center = static_cast<float>(static_cast<double>(scale) * (static_cast<double>(out_index) + 0.5));
  w.inv_scale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  const int64_t lo = static_cast<int64_t>(static_cast<double>(w.center - support) + 0.5);
  const int64_t hi = static_cast<int64_t>(static_cast<double>(w.center + support) + 0.5);
  w.begin = lo > 0 ? lo : 0;
  w.size = (hi < in_size ? hi : in_size) - w.begin;
  // torch caps the window at ceil(support) * 2 + 1 taps (float rounding can add one).
  const int64_t max_taps = static_cast<int64_t>(ceilf(support)) * 2 + 1;
  if (w.size > max_taps) w.size = max_taps;
  if (w.size < 0) w.size = 0;
  return w;
}

MARLIN_HD float tap_weight(ResampleFilter f, const FilterWindow& w, int64_t j) {
  const float offset = static_cast<float>(w.begin + j) - w.center;
  return filter_weight(f, static_cast<float>((static_cast<double>(offset) + 0.5) * static_cast<double>(w.inv_scale)));
}

// Round half up and clamp to 0..255, as the fixed-point u8 resamplers of PIL and torch do.
MARLIN_HD float round_to_u8(float v) {
  v = floorf(v + 0.5f);
  return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

// The value a resample stores for channel c.
MARLIN_HD float resample_finish(const ResamplePlan& p, int64_t c, float v) {
  if (p.round_to_u8) v = round_to_u8(v);
  if (p.normalize) v = (v * p.value_scale - p.mean[c]) / p.std[c];
  return v;
}

// Qwen2-VL's patch layout (Transformers' Qwen2VLImageProcessor): the resized image [C, H, W]
// becomes rows ordered (block_h, block_w, merge_h, merge_w) and columns (c, t, ph, pw), the
// still image repeated over t. Returns the offset of pixel (n, c, y, x) at t = 0; the copy for
// frame t sits t * patch * patch further.
MARLIN_HD int64_t qwen2vl_patch_offset(const ResamplePlan& p, int64_t n, int64_t c, int64_t y,
                                       int64_t x) {
  const int64_t ps = p.patch_size, ms = p.merge_size, T = p.temporal_patch_size;
  const int64_t grid_h = p.out.height / ps, grid_w = p.out.width / ps;
  const int64_t py = y / ps, ph = y % ps, px = x / ps, pw = x % ps;
  const int64_t row = (((py / ms) * (grid_w / ms) + px / ms) * ms + py % ms) * ms + px % ms;
  const int64_t cols = p.out.channels * T * ps * ps;
  return (n * grid_h * grid_w + row) * cols + ((c * T) * ps + ph) * ps + pw;
}

// torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
constexpr float kLumaR = 0.2989f, kLumaG = 0.587f, kLumaB = 0.114f;

// A pixel value in [0, 1] units: u8 / 255, f32 as is.
MARLIN_HD float unit_value(uint8_t v) { return static_cast<float>(v) / 255.0f; }
MARLIN_HD float unit_value(float v) { return v; }

// Transformers' convert_to_rgb for RGBA: rgb * alpha + (1 - alpha) in [0, 1] units; back to u8
// as torchvision's to_dtype does (times 255.999, truncated).
template <typename T>
MARLIN_HD T composite_on_white(T v, float alpha) {
  const float out = unit_value(v) * alpha + (1.0f - alpha);
  if constexpr (sizeof(T) == 1) return static_cast<T>(out * 255.999f);
  else return out;
}

// Source pixel of output element `i` of extract_patches: outputs [N, P, K] with K = C*p*p in
// (c, ph, pw) order for NCHW and (ph, pw, c) for NHWC.
MARLIN_HD int64_t patch_source_index(const ImageGeometry& g, int64_t patch, int64_t i) {
  const int64_t K = g.channels * patch * patch;
  const int64_t n_patches_w = g.width / patch, n_patches = (g.height / patch) * n_patches_w;
  const int64_t k = i % K, pi = (i / K) % n_patches, n = i / (K * n_patches);
  int64_t c, ph, pw;
  if (g.nhwc) {
    c = k % g.channels;
    pw = (k / g.channels) % patch;
    ph = k / (g.channels * patch);
  } else {
    pw = k % patch;
    ph = (k / patch) % patch;
    c = k / (patch * patch);
  }
  return g.index(n, c, (pi / n_patches_w) * patch + ph, (pi % n_patches_w) * patch + pw);
}

}  // namespace marlin::vision
