// CUDA vision kernels, tested against kernels/cpu/vision.cpp (tests/cuda/vision_cuda_test.cpp).
// Elementwise ops are grid-stride loops; the resample is two passes, rows then columns (as
// torch), with the 8-bit rounding, normalization and Qwen2-VL patch layout fused into the
// column pass, so the input is read once and the output written once.
#include <algorithm>
#include <cmath>

#include "core/cuda_check.h"
#include "kernels/cuda/vision_cuda.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using vision::ImageGeometry;
using vision::ResamplePlan;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 1 << 20));
}

cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_stream(t.device().index).handle);
}

// Runs fn(T{}) with T = uint8_t or float by dtype.
template <typename Fn>
void dispatch_pixel(DType dtype, Fn&& fn) {
  if (dtype == DType::u8) fn(uint8_t{});
  else fn(float{});
}

#define MARLIN_GRID_STRIDE(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__device__ __forceinline__ T store_pixel(float v) {
  if constexpr (sizeof(T) == 1) return static_cast<T>(vision::round_to_u8(v));
  else return v;
}

// (n, c, y, x) of element i of a contiguous image batch.
__device__ __forceinline__ void unravel(const ImageGeometry& g, int64_t i, int64_t& n, int64_t& c,
                                        int64_t& y, int64_t& x) {
  if (g.nhwc) {
    c = i % g.channels;
    i /= g.channels;
    x = i % g.width;
    i /= g.width;
    y = i % g.height;
    n = i / g.height;
  } else {
    x = i % g.width;
    i /= g.width;
    y = i % g.height;
    i /= g.height;
    c = i % g.channels;
    n = i / g.channels;
  }
}

__global__ void uint8_to_float_kernel(const uint8_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
  MARLIN_GRID_STRIDE(i, n) dst[i] = static_cast<float>(src[i]) / 255.0f;
}

template <typename T>
__global__ void crop_kernel(const T* __restrict__ src, ImageGeometry g, int64_t top, int64_t left,
                            T* __restrict__ dst, ImageGeometry og) {
  MARLIN_GRID_STRIDE(i, og.numel()) {
    int64_t n, c, y, x;
    unravel(og, i, n, c, y, x);
    const int64_t sy = y + top, sx = x + left;
    const bool inside = sy >= 0 && sy < g.height && sx >= 0 && sx < g.width;
    dst[i] = inside ? src[g.index(n, c, sy, sx)] : T(0);
  }
}

struct ChannelValues {
  float v[4];
};

template <typename T>
__global__ void normalize_kernel(const T* __restrict__ src, ImageGeometry g, float value_scale,
                                 ChannelValues mean, ChannelValues std, float* __restrict__ dst) {
  const int64_t plane = g.height * g.width;
  MARLIN_GRID_STRIDE(i, g.numel()) {
    const int64_t c = g.nhwc ? i % g.channels : (i / plane) % g.channels;
    dst[i] = (static_cast<float>(src[i]) * value_scale - mean.v[c]) / std.v[c];
  }
}

struct ChannelMap {
  int c[4];
};

template <typename T>
__global__ void select_channels_kernel(const T* __restrict__ src, ImageGeometry g, ChannelMap map,
                                       T* __restrict__ dst, ImageGeometry og) {
  MARLIN_GRID_STRIDE(i, og.numel()) {
    int64_t n, c, y, x;
    unravel(og, i, n, c, y, x);
    dst[i] = src[g.index(n, map.c[c], y, x)];
  }
}

template <typename T>
__global__ void grayscale_kernel(const T* __restrict__ src, ImageGeometry g, T* __restrict__ dst,
                                 ImageGeometry og) {
  MARLIN_GRID_STRIDE(i, og.numel()) {
    int64_t n, c, y, x;
    unravel(og, i, n, c, y, x);
    const float luma = vision::kLumaR * static_cast<float>(src[g.index(n, 0, y, x)]) +
                       vision::kLumaG * static_cast<float>(src[g.index(n, 1, y, x)]) +
                       vision::kLumaB * static_cast<float>(src[g.index(n, 2, y, x)]);
    dst[i] = static_cast<T>(luma);  // torchvision truncates to u8
  }
}

template <typename T>
__global__ void to_rgb_kernel(const T* __restrict__ src, ImageGeometry g, T* __restrict__ dst,
                              ImageGeometry og) {
  MARLIN_GRID_STRIDE(i, og.numel()) {
    int64_t n, c, y, x;
    unravel(og, i, n, c, y, x);
    const T v = src[g.index(n, g.channels == 1 ? 0 : c, y, x)];
    dst[i] = g.channels == 4 ? vision::composite_on_white<T>(v, vision::unit_value(src[g.index(n, 3, y, x)]))
                             : v;
  }
}

template <typename T>
__global__ void extract_patches_kernel(const T* __restrict__ src, ImageGeometry g, int64_t patch,
                                       T* __restrict__ dst) {
  MARLIN_GRID_STRIDE(i, g.numel()) dst[i] = src[vision::patch_source_index(g, patch, i)];
}

// The taps of one axis, computed once per call on the device: begin, count and normalized
// weights [out_size, max_taps] (the CPU reference computes the same windows and weights).
struct TapTable {
  const int64_t* begin;
  const int32_t* size;
  const float* weight;
  int32_t max_taps;
};

__global__ void build_taps_kernel(vision::ResampleFilter filter, int64_t in_size, int64_t out_size,
                                  int32_t max_taps, int64_t* begin, int32_t* size, float* weight) {
  MARLIN_GRID_STRIDE(o, out_size) {
    const vision::FilterWindow w = vision::filter_window(filter, o, in_size, out_size);
    const int32_t n = static_cast<int32_t>(w.size < max_taps ? w.size : max_taps);
    float* wt = weight + o * max_taps;
    float total = 0.0f;
    for (int32_t j = 0; j < n; ++j) total += (wt[j] = vision::tap_weight(filter, w, j));
    for (int32_t j = 0; j < n; ++j) wt[j] = total != 0.0f ? wt[j] / total : 0.0f;
    begin[o] = w.begin;
    size[o] = n;
  }
}

// Row pass: tmp [N, C, H_in, W_out] (u8 for u8 images, whose row pass is stored as 8 bits).
template <typename In, typename Tmp>
__global__ void resample_rows_kernel(const In* __restrict__ src, ImageGeometry g, int64_t out_width,
                                     TapTable taps, Tmp* __restrict__ tmp) {
  MARLIN_GRID_STRIDE(i, g.batch * g.channels * g.height * out_width) {
    const int64_t ox = i % out_width, r = i / out_width;
    const int64_t y = r % g.height, c = (r / g.height) % g.channels, n = r / (g.height * g.channels);
    const In* row = src + g.index(n, c, y, taps.begin[ox]);
    const float* wt = taps.weight + ox * taps.max_taps;
    const int64_t step = g.nhwc ? g.channels : 1;
    float acc = 0.0f;
    for (int32_t j = 0; j < taps.size[ox]; ++j) acc += wt[j] * static_cast<float>(row[j * step]);
    tmp[i] = store_pixel<Tmp>(acc);
  }
}

// Column pass with the value transform, writing the image or Qwen2-VL patches.
template <typename Tmp, typename Out>
__global__ void resample_columns_kernel(const Tmp* __restrict__ tmp, ResamplePlan p, TapTable taps,
                                        Out* __restrict__ dst) {
  const ImageGeometry& g = p.in;
  const int64_t out_h = p.out.height, out_w = p.out.width;
  MARLIN_GRID_STRIDE(i, g.batch * g.channels * out_h * out_w) {
    const int64_t ox = i % out_w, r = i / out_w;
    const int64_t oy = r % out_h, c = (r / out_h) % g.channels, n = r / (out_h * g.channels);
    const Tmp* col = tmp + ((n * g.channels + c) * g.height + taps.begin[oy]) * out_w + ox;
    const float* wt = taps.weight + oy * taps.max_taps;
    float acc = 0.0f;
    for (int32_t j = 0; j < taps.size[oy]; ++j) acc += wt[j] * static_cast<float>(col[j * out_w]);
    const Out v = store_pixel<Out>(vision::resample_finish(p, c, acc));
    if (p.target == vision::ResampleTarget::image) {
      dst[p.out.index(n, c, oy, ox)] = v;
    } else {
      const int64_t at = vision::qwen2vl_patch_offset(p, n, c, oy, ox);
      for (int64_t t = 0; t < p.temporal_patch_size; ++t) dst[at + t * p.patch_size * p.patch_size] = v;
    }
  }
}

// Workspace and launch of build_taps_kernel for one axis; `storage` keeps the table alive.
TapTable build_taps(vision::ResampleFilter filter, int64_t in_size, int64_t out_size, Device device,
                    cudaStream_t stream, Tensor& storage) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float support = vision::filter_support(filter) * (scale >= 1.0f ? scale : 1.0f);
  const auto max_taps = static_cast<int32_t>(std::ceil(support)) * 2 + 1;
  // One allocation: begin (i64), then size (i32, padded to 8 bytes), then weights.
  const int64_t words = out_size * 2 + (out_size + 1) / 2 * 2 + out_size * max_taps;
  storage = Tensor::empty({words}, DType::i32, device);
  auto* base = static_cast<int32_t*>(storage.data_ptr());
  auto* begin = reinterpret_cast<int64_t*>(base);
  int32_t* size = base + out_size * 2;
  auto* weight = reinterpret_cast<float*>(size + (out_size + 1) / 2 * 2);
  build_taps_kernel<<<blocks_for(out_size), kThreads, 0, stream>>>(filter, in_size, out_size, max_taps, begin,
                                                                  size, weight);
  MARLIN_CUDA_CHECK_LAUNCH("resample (taps)");
  return TapTable{begin, size, weight, max_taps};
}

}  // namespace

void vision_uint8_to_float(const Tensor& in, Tensor& out) {
  const int64_t n = in.numel();
  uint8_to_float_kernel<<<blocks_for(n), kThreads, 0, stream_of(in)>>>(in.data<uint8_t>(), out.data<float>(), n);
  MARLIN_CUDA_CHECK_LAUNCH("uint8_to_float");
}

void vision_crop(const Tensor& in, const ImageGeometry& g, int64_t top, int64_t left, Tensor& out,
                 const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    crop_kernel<T><<<blocks_for(og.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, top, left,
                                                                         out.data<T>(), og);
  });
  MARLIN_CUDA_CHECK_LAUNCH("center_crop");
}

void vision_normalize(const Tensor& in, const ImageGeometry& g, float value_scale, const float* mean,
                      const float* std, Tensor& out) {
  ChannelValues m{}, s{};
  for (int64_t c = 0; c < g.channels; ++c) {
    m.v[c] = mean[c];
    s.v[c] = std[c];
  }
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    normalize_kernel<T><<<blocks_for(g.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, value_scale,
                                                                             m, s, out.data<float>());
  });
  MARLIN_CUDA_CHECK_LAUNCH("normalize");
}

void vision_select_channels(const Tensor& in, const ImageGeometry& g, const int* channel_map,
                            Tensor& out, const ImageGeometry& og) {
  ChannelMap map{};
  for (int64_t c = 0; c < og.channels; ++c) map.c[c] = channel_map[c];
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    select_channels_kernel<T><<<blocks_for(og.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, map,
                                                                                    out.data<T>(), og);
  });
  MARLIN_CUDA_CHECK_LAUNCH("select_channels");
}

void vision_grayscale(const Tensor& in, const ImageGeometry& g, Tensor& out, const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    grayscale_kernel<T><<<blocks_for(og.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, out.data<T>(), og);
  });
  MARLIN_CUDA_CHECK_LAUNCH("rgb_to_grayscale");
}

void vision_to_rgb(const Tensor& in, const ImageGeometry& g, Tensor& out, const ImageGeometry& og) {
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    to_rgb_kernel<T><<<blocks_for(og.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, out.data<T>(), og);
  });
  MARLIN_CUDA_CHECK_LAUNCH("to_rgb");
}

void vision_extract_patches(const Tensor& in, const ImageGeometry& g, int64_t patch, Tensor& out) {
  dispatch_pixel(in.dtype(), [&](auto tag) {
    using T = decltype(tag);
    extract_patches_kernel<T><<<blocks_for(g.numel()), kThreads, 0, stream_of(in)>>>(in.data<T>(), g, patch,
                                                                                   out.data<T>());
  });
  MARLIN_CUDA_CHECK_LAUNCH("extract_patches");
}

void vision_resample(const Tensor& in, const ResamplePlan& plan, Tensor& out) {
  const ImageGeometry& g = plan.in;
  cudaStream_t stream = stream_of(in);
  // Workspaces go back to the caching allocator on return; later work on this stream that
  // reuses them is ordered after these kernels.
  Tensor x_storage, y_storage;
  const TapTable tx = build_taps(plan.filter, g.width, plan.out.width, in.device(), stream, x_storage);
  const TapTable ty = build_taps(plan.filter, g.height, plan.out.height, in.device(), stream, y_storage);
  const DType tmp_dtype = plan.round_to_u8 ? DType::u8 : DType::f32;
  Tensor tmp = Tensor::empty({g.batch, g.channels, g.height, plan.out.width}, tmp_dtype, in.device());
  const int64_t n_out = g.batch * g.channels * plan.out.height * plan.out.width;
  dispatch_pixel(in.dtype(), [&](auto in_tag) {
    using In = decltype(in_tag);
    dispatch_pixel(tmp_dtype, [&](auto tmp_tag) {
      using Tmp = decltype(tmp_tag);
      resample_rows_kernel<In, Tmp><<<blocks_for(tmp.numel()), kThreads, 0, stream>>>(
          in.data<In>(), g, plan.out.width, tx, tmp.data<Tmp>());
      MARLIN_CUDA_CHECK_LAUNCH("resample (rows)");
      dispatch_pixel(out.dtype(), [&](auto out_tag) {
        using Out = decltype(out_tag);
        resample_columns_kernel<Tmp, Out><<<blocks_for(n_out), kThreads, 0, stream>>>(tmp.data<Tmp>(), plan, ty,
                                                                                     out.data<Out>());
        MARLIN_CUDA_CHECK_LAUNCH("resample (columns)");
      });
    });
  });
}

}  // namespace marlin::cuda
