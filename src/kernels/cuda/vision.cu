// CUDA vision kernels, tested against kernels/cpu/vision.cpp (tests/cuda/vision_cuda_test.cpp).
// Elementwise ops are grid-stride loops; the resample is two passes, rows then columns (as
// torch), with the 8-bit rounding, normalization and Qwen2-VL patch layout fused into the
// column pass, so the input is read once and the output written once (docs/VISION.md, Speed).
#include <algorithm>
#include <cmath>
#include <cstdint>

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

// u8 -> f32 through the bit pattern of 2^23 + v: exact, and an integer OR plus an add instead of
// a conversion instruction, which issues at a quarter of the FMA rate.
__device__ __forceinline__ float pixel_float(uint8_t v) {
  return __uint_as_float(0x4B000000u | v) - 8388608.0f;
}
__device__ __forceinline__ float pixel_float(float v) { return v; }

// Row pass: tmp [N, C, H_in, W_out] (u8 for u8 images, whose row pass is stored as 8 bits). One
// thread per (input row, output column) does every channel, blockIdx.x being the row (n, y):
// indexing costs one 32-bit division per thread (a flat element index cost several 64-bit
// divisions per value, which made the pass bound on instruction issue, not memory). kRgb: NHWC
// with 3 channels (decoded images), whose taps share one weight load per pixel.
constexpr int kRowThreads = 128;

template <typename In, typename Tmp, bool kRgb>
__global__ void resample_rows_kernel(const In* __restrict__ src, ImageGeometry g, int32_t out_width,
                                     TapTable taps, Tmp* __restrict__ tmp) {
  const int32_t ox = static_cast<int32_t>(blockIdx.y * blockDim.x + threadIdx.x);
  if (ox >= out_width) return;
  const auto height = static_cast<uint32_t>(g.height);
  const auto n = static_cast<int64_t>(blockIdx.x / height), y = static_cast<int64_t>(blockIdx.x % height);
  const auto x0 = static_cast<int32_t>(taps.begin[ox]);
  const int32_t size = taps.size[ox];
  const float* wt = taps.weight + static_cast<int64_t>(ox) * taps.max_taps;
  const int64_t plane = g.height * out_width;
  Tmp* out = tmp + (n * g.channels * g.height + y) * out_width + ox;
  const In* px = src + g.index(n, 0, y, x0);
  if constexpr (kRgb) {
    float r = 0.0f, gr = 0.0f, b = 0.0f;
    for (int32_t j = 0; j < size; ++j, px += 3) {
      const float w = wt[j];
      r += w * pixel_float(px[0]);
      gr += w * pixel_float(px[1]);
      b += w * pixel_float(px[2]);
    }
    out[0] = store_pixel<Tmp>(r);
    out[plane] = store_pixel<Tmp>(gr);
    out[2 * plane] = store_pixel<Tmp>(b);
  } else {
    // NHWC: the channels of a tap are adjacent; NCHW: each channel is its own row.
    const auto step = static_cast<int32_t>(g.nhwc ? g.channels : 1);
    const int64_t channel_step = g.nhwc ? 1 : g.height * g.width;
    for (int64_t c = 0; c < g.channels; ++c, px += channel_step) {
      float acc = 0.0f;
      for (int32_t j = 0; j < size; ++j) acc += wt[j] * pixel_float(px[j * step]);
      out[c * plane] = store_pixel<Tmp>(acc);
    }
  }
}

// Column pass with the value transform, writing the image or (other patch shapes than
// resample_qwen2vl_kernel's) Qwen2-VL patches. Indexed as the row pass: blockIdx.x is the output
// row (n, c, oy), blockIdx.y * blockDim.x + threadIdx.x the column.
template <typename Tmp, typename Out>
__global__ void resample_columns_kernel(const Tmp* __restrict__ tmp, ResamplePlan p, TapTable taps,
                                        Out* __restrict__ dst) {
  const ImageGeometry& g = p.in;
  const int64_t out_w = p.out.width;
  const int64_t ox = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (ox >= out_w) return;
  const auto out_h = static_cast<uint32_t>(p.out.height), channels = static_cast<uint32_t>(g.channels);
  const uint32_t plane = blockIdx.x / out_h, oy = blockIdx.x % out_h;
  const int64_t c = plane % channels, n = plane / channels;
  const Tmp* col = tmp + (static_cast<int64_t>(plane) * g.height + taps.begin[oy]) * out_w + ox;
  const float* wt = taps.weight + oy * taps.max_taps;
  float acc = 0.0f;
  for (int32_t j = 0; j < taps.size[oy]; ++j, col += out_w) acc += wt[j] * pixel_float(*col);
  const Out v = store_pixel<Out>(vision::resample_finish(p, c, acc));
  if (p.target == vision::ResampleTarget::image) {
    dst[p.out.index(n, c, oy, ox)] = v;
  } else {
    const int64_t at = vision::qwen2vl_patch_offset(p, n, c, oy, ox);
    for (int64_t t = 0; t < p.temporal_patch_size; ++t) dst[at + t * p.patch_size * p.patch_size] = v;
  }
}

// Column pass of Qwen2-VL (3 channels, f32 output): one block per merge group of MS x MS patches,
// whose MS*MS output rows of (c, t, ph, pw) are one contiguous run of the output. The group's
// resampled, normalized pixels go to shared memory first, then the run is written as whole
// float4s in output order (frames repeated from shared memory), so global stores are coalesced
// and every output element costs no index division at run time (PS, MS, T are constants).
constexpr int kQwenThreads = 256;

template <typename Tmp, int PS, int MS, int T>
__global__ void __launch_bounds__(kQwenThreads)
    resample_qwen2vl_kernel(const Tmp* __restrict__ tmp, ResamplePlan p, TapTable taps,
                            float* __restrict__ dst) {
  constexpr int kC = 3, kTile = PS * MS, kPixels = kTile * kTile;
  constexpr int kCols = kC * T * PS * PS, kRun = MS * MS * kCols;
  static_assert((PS * PS) % 4 == 0, "a frame must be whole float4s");
  __shared__ float tile[kC * kPixels];
  const int64_t groups_w = p.out.width / kTile, groups_h = p.out.height / kTile;
  const int64_t group = blockIdx.x;  // (n, gy, gx): also the group's place in the output
  const int64_t gx = group % groups_w, gy = (group / groups_w) % groups_h, n = group / (groups_w * groups_h);
  // Offsets inside one image's [C, H_in, W_out] fit 32 bits (checked at launch).
  const auto in_h = static_cast<int32_t>(p.in.height), out_w = static_cast<int32_t>(p.out.width);
  const Tmp* image = tmp + n * kC * p.in.height * p.out.width;
  for (int i = threadIdx.x; i < kC * kPixels; i += kQwenThreads) {
    const int c = i / kPixels, yy = (i / kTile) % kTile, xx = i % kTile;
    const auto oy = static_cast<int32_t>(gy * kTile + yy), ox = static_cast<int32_t>(gx * kTile + xx);
    const Tmp* col = image + (c * in_h + static_cast<int32_t>(taps.begin[oy])) * out_w + ox;
    const float* wt = taps.weight + oy * taps.max_taps;
    const int32_t size = taps.size[oy];
    float acc = 0.0f;
    for (int32_t j = 0; j < size; ++j, col += out_w) acc += wt[j] * pixel_float(*col);
    tile[i] = vision::resample_finish(p, c, acc);
  }
  __syncthreads();
  float4* out = reinterpret_cast<float4*>(dst + group * kRun);
  for (int i = threadIdx.x; i < kRun / 4; i += kQwenThreads) {
    // A frame's PS*PS values are whole float4s, so the four share row, channel and frame.
    const int k = i * 4, row = k / kCols, col = k % kCols, c = col / (T * PS * PS);
    const float* group_row = tile + c * kPixels + (row / MS) * PS * kTile + (row % MS) * PS;
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int pixel = (col + u) % (PS * PS);
      v[u] = group_row[(pixel / PS) * kTile + pixel % PS];
    }
    __stcs(out + i, make_float4(v[0], v[1], v[2], v[3]));  // streamed: nothing here reads it back
  }
}

// Launches the Qwen2-VL column kernel when the plan has a compiled shape; false otherwise (the
// generic column kernel handles it).
template <typename Tmp>
bool launch_qwen2vl_columns(const Tmp* tmp, const ResamplePlan& p, const TapTable& ty, Tensor& out,
                            cudaStream_t stream) {
  if (p.in.channels != 3 || out.dtype() != DType::f32 ||
      reinterpret_cast<uintptr_t>(out.data_ptr()) % alignof(float4) != 0)
    return false;
  const int64_t groups = p.in.batch * (p.out.height / (p.patch_size * p.merge_size)) *
                         (p.out.width / (p.patch_size * p.merge_size));
  const int64_t side = p.patch_size * p.merge_size;
  if (groups <= 0 || groups > INT32_MAX || p.merge_size != 2 || p.temporal_patch_size != 2 ||
      p.out.height % side != 0 || p.out.width % side != 0 ||
      p.in.channels * p.in.height * p.out.width > INT32_MAX)
    return false;
  const auto blocks = static_cast<unsigned>(groups);
  if (p.patch_size == 14)
    resample_qwen2vl_kernel<Tmp, 14, 2, 2><<<blocks, kQwenThreads, 0, stream>>>(tmp, p, ty, out.data<float>());
  else if (p.patch_size == 16)
    resample_qwen2vl_kernel<Tmp, 16, 2, 2><<<blocks, kQwenThreads, 0, stream>>>(tmp, p, ty, out.data<float>());
  else
    return false;
  MARLIN_CUDA_CHECK_LAUNCH("preprocess_qwen2vl (columns)");
  return true;
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
  // Rows (and output rows) index the grid's x, column blocks its y.
  MARLIN_CHECK(g.batch * g.channels * std::max(g.height, plan.out.height) <= INT32_MAX &&
                   (plan.out.width + kRowThreads - 1) / kRowThreads <= 65535,
               "resize", "image batch ", g.batch, "x", g.channels, "x", g.height, " to ",
               plan.out.height, "x", plan.out.width, " exceeds the CUDA grid");
  const dim3 row_grid(static_cast<unsigned>(g.batch * g.height),
                      static_cast<unsigned>((plan.out.width + kRowThreads - 1) / kRowThreads));
  const dim3 column_grid(static_cast<unsigned>(g.batch * g.channels * plan.out.height), row_grid.y);
  dispatch_pixel(in.dtype(), [&](auto in_tag) {
    using In = decltype(in_tag);
    dispatch_pixel(tmp_dtype, [&](auto tmp_tag) {
      using Tmp = decltype(tmp_tag);
      const auto out_width = static_cast<int32_t>(plan.out.width);
      if (g.nhwc && g.channels == 3)
        resample_rows_kernel<In, Tmp, true><<<row_grid, kRowThreads, 0, stream>>>(in.data<In>(), g, out_width, tx,
                                                                                 tmp.data<Tmp>());
      else
        resample_rows_kernel<In, Tmp, false><<<row_grid, kRowThreads, 0, stream>>>(in.data<In>(), g, out_width, tx,
                                                                                  tmp.data<Tmp>());
      MARLIN_CUDA_CHECK_LAUNCH("resample (rows)");
      if (plan.target == vision::ResampleTarget::qwen2vl_patches &&
          launch_qwen2vl_columns<Tmp>(tmp.data<Tmp>(), plan, ty, out, stream))
        return;
      dispatch_pixel(out.dtype(), [&](auto out_tag) {
        using Out = decltype(out_tag);
        resample_columns_kernel<Tmp, Out><<<column_grid, kRowThreads, 0, stream>>>(tmp.data<Tmp>(), plan, ty,
                                                                                  out.data<Out>());
        MARLIN_CUDA_CHECK_LAUNCH("resample (columns)");
      });
    });
  });
}

}  // namespace marlin::cuda
