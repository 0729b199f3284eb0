// CPU vision kernels: the reference that kernels/cuda/vision.cu is tested against, itself
// checked against torchvision/Transformers fixtures (tests/vision).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/vision_cpu.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {
namespace {

using vision::ImageGeometry;
using vision::ResamplePlan;

// Stores a float into u8 (rounded half up, clamped) or f32.
template <typename T>
T store(float v) {
  if constexpr (std::is_same_v<T, uint8_t>) return static_cast<uint8_t>(vision::round_to_u8(v));
  else return v;
}

// Runs body.template operator()<T>() with T = uint8_t or float by dtype.
template <typename Body>
void dispatch_pixel(DType dtype, Body&& body) {
  if (dtype == DType::u8) body.template operator()<uint8_t>();
  else body.template operator()<float>();
}

// Precomputed taps of one axis: weights already divided by their sum, as torch does.
struct AxisTaps {
  std::vector<int64_t> begin, size;
  std::vector<float> weights;  // [out_size, max_taps]
  int64_t max_taps = 0;
};

AxisTaps compute_taps(vision::ResampleFilter f, int64_t in_size, int64_t out_size) {
  AxisTaps t;
  // Each window is computed once: the weights must line up with the stored begin.
  std::vector<vision::FilterWindow> windows;
  for (int64_t o = 0; o < out_size; ++o) {
    windows.push_back(vision::filter_window(f, o, in_size, out_size));
    t.begin.push_back(windows.back().begin);
    t.size.push_back(windows.back().size);
    t.max_taps = std::max(t.max_taps, windows.back().size);
  }
  t.weights.assign(static_cast<size_t>(out_size * t.max_taps), 0.0f);
  for (int64_t o = 0; o < out_size; ++o) {
    const auto& w = windows[static_cast<size_t>(o)];
    float* wt = t.weights.data() + o * t.max_taps;
    float total = 0.0f;
    for (int64_t j = 0; j < w.size; ++j) total += (wt[j] = vision::tap_weight(f, w, j));
    if (total != 0.0f)
      for (int64_t j = 0; j < w.size; ++j) wt[j] /= total;
  }
  return t;
}

}  // namespace

void vision_uint8_to_float(const Tensor& in, Tensor& out) {
  const uint8_t* src = in.data<uint8_t>();
  float* dst = out.data<float>();
  parallel_for(0, in.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<float>(src[i]) / 255.0f;
  });
}

void vision_crop(const Tensor& in, const ImageGeometry& g, int64_t top, int64_t left, Tensor& out,
                 const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    parallel_for(0, og.batch * og.height, 16, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / og.height, y = row % og.height, sy = y + top;
        for (int64_t x = 0; x < og.width; ++x)
          for (int64_t c = 0; c < og.channels; ++c) {
            const int64_t sx = x + left;
            const bool inside = sy >= 0 && sy < g.height && sx >= 0 && sx < g.width;
            dst[og.index(n, c, y, x)] = inside ? src[g.index(n, c, sy, sx)] : T(0);
          }
      }
    });
  });
}

void vision_normalize(const Tensor& in, const ImageGeometry& g, float value_scale,
                      const float* mean, const float* std, Tensor& out) {
  float* dst = out.data<float>();
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    const int64_t plane = g.height * g.width;
    parallel_for(0, g.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t c = g.nhwc ? i % g.channels : (i / plane) % g.channels;
        dst[i] = (static_cast<float>(src[i]) * value_scale - mean[c]) / std[c];
      }
    });
  });
}

void vision_select_channels(const Tensor& in, const ImageGeometry& g, const int* channel_map,
                            Tensor& out, const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    parallel_for(0, g.batch * g.height, 16, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / g.height, y = row % g.height;
        for (int64_t x = 0; x < g.width; ++x)
          for (int64_t c = 0; c < og.channels; ++c)
            dst[og.index(n, c, y, x)] = src[g.index(n, channel_map[c], y, x)];
      }
    });
  });
}

void vision_grayscale(const Tensor& in, const ImageGeometry& g, Tensor& out,
                      const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    parallel_for(0, g.batch * g.height, 16, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / g.height, y = row % g.height;
        for (int64_t x = 0; x < g.width; ++x) {
          const float luma = vision::kLumaR * static_cast<float>(src[g.index(n, 0, y, x)]) +
                             vision::kLumaG * static_cast<float>(src[g.index(n, 1, y, x)]) +
                             vision::kLumaB * static_cast<float>(src[g.index(n, 2, y, x)]);
          // torchvision casts the luma to u8 by truncation, not rounding.
          for (int64_t c = 0; c < og.channels; ++c) dst[og.index(n, c, y, x)] = static_cast<T>(luma);
        }
      }
    });
  });
}

void vision_to_rgb(const Tensor& in, const ImageGeometry& g, Tensor& out, const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    parallel_for(0, g.batch * g.height, 16, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / g.height, y = row % g.height;
        for (int64_t x = 0; x < g.width; ++x) {
          float alpha = 1.0f;
          if (g.channels == 4) alpha = vision::unit_value(src[g.index(n, 3, y, x)]);
          for (int64_t c = 0; c < 3; ++c) {
            const T v = src[g.index(n, g.channels == 1 ? 0 : c, y, x)];
            dst[og.index(n, c, y, x)] =
                g.channels == 4 ? vision::composite_on_white<T>(v, alpha) : v;
          }
        }
      }
    });
  });
}

void vision_extract_patches(const Tensor& in, const ImageGeometry& g, int64_t patch, Tensor& out) {
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    T* dst = out.data<T>();
    parallel_for(0, out.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = src[vision::patch_source_index(g, patch, i)];
    });
  });
}

void vision_resample(const Tensor& in, const ResamplePlan& plan, Tensor& out) {
  const ImageGeometry& g = plan.in;
  const ImageGeometry& og = plan.out;
  const AxisTaps tx = compute_taps(plan.filter, g.width, og.width);
  const AxisTaps ty = compute_taps(plan.filter, g.height, og.height);
  // Horizontal pass first (as torch): tmp [N, C, H_in, W_out] in f32.
  std::vector<float> tmp(static_cast<size_t>(g.batch * g.channels * g.height * og.width));
  dispatch_pixel(in.dtype(), [&]<typename T>() {
    const T* src = in.data<T>();
    parallel_for(0, g.batch * g.channels * g.height, 8, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t y = r % g.height, c = (r / g.height) % g.channels, n = r / (g.height * g.channels);
        float* row = tmp.data() + r * og.width;
        for (int64_t ox = 0; ox < og.width; ++ox) {
          const float* wt = tx.weights.data() + ox * tx.max_taps;
          const int64_t x0 = tx.begin[static_cast<size_t>(ox)];
          float acc = 0.0f;
          for (int64_t j = 0; j < tx.size[static_cast<size_t>(ox)]; ++j)
            acc += wt[j] * static_cast<float>(src[g.index(n, c, y, x0 + j)]);
          row[ox] = plan.round_to_u8 ? vision::round_to_u8(acc) : acc;
        }
      }
    });
  });
  const bool patches = plan.target == vision::ResampleTarget::qwen2vl_patches;
  const int64_t frame_stride = plan.patch_size * plan.patch_size;
  dispatch_pixel(out.dtype(), [&]<typename T>() {
    T* dst = out.data<T>();
    parallel_for(0, g.batch * g.channels * og.height, 4, [&](int64_t b, int64_t e) {
      std::vector<float> acc(static_cast<size_t>(og.width));
      for (int64_t r = b; r < e; ++r) {
        const int64_t oy = r % og.height, c = (r / og.height) % g.channels, n = r / (og.height * g.channels);
        const float* wt = ty.weights.data() + oy * ty.max_taps;
        const int64_t y0 = ty.begin[static_cast<size_t>(oy)];
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < ty.size[static_cast<size_t>(oy)]; ++j) {
          const float* row = tmp.data() + ((n * g.channels + c) * g.height + y0 + j) * og.width;
          for (int64_t ox = 0; ox < og.width; ++ox) acc[static_cast<size_t>(ox)] += wt[j] * row[ox];
        }
        for (int64_t ox = 0; ox < og.width; ++ox) {
          const T v = store<T>(vision::resample_finish(plan, c, acc[static_cast<size_t>(ox)]));
          if (!patches) {
            dst[og.index(n, c, oy, ox)] = v;
            continue;
          }
          const int64_t at = vision::qwen2vl_patch_offset(plan, n, c, oy, ox);
          for (int64_t t = 0; t < plan.temporal_patch_size; ++t) dst[at + t * frame_stride] = v;
        }
      }
    });
  });
}

}  // namespace marlin::cpu
