// CUDA backend of the vision ops (kernels/cuda/vision.cu), tested against kernels/cpu/vision.cpp.
// Arguments are already checked by ops/vision_ops.cpp; tensors are contiguous and on one device,
// outputs preallocated; each launcher runs on the current stream and checks its launch.
#pragma once

#include "kernels/vision_common.h"
#include "marlin/tensor.h"

namespace marlin::cuda {

// out f32 = in u8 / 255, elementwise.
void vision_uint8_to_float(const Tensor& in, Tensor& out);
// out [N, C, h, w] (in's layout and dtype) = in's window at (top, left); outside is zero.
void vision_crop(const Tensor& in, const vision::ImageGeometry& g, int64_t top, int64_t left,
                 Tensor& out, const vision::ImageGeometry& out_g);
// out f32 = (in * value_scale - mean[c]) / std[c].
void vision_normalize(const Tensor& in, const vision::ImageGeometry& g, float value_scale,
                      const float* mean, const float* std, Tensor& out);
// out channel k = in channel channel_map[k], same dtype (out_g.channels outputs).
void vision_select_channels(const Tensor& in, const vision::ImageGeometry& g,
                            const int* channel_map, Tensor& out, const vision::ImageGeometry& out_g);
// out channels (1 or out_g.channels, all equal) = luma of in's first three channels.
void vision_grayscale(const Tensor& in, const vision::ImageGeometry& g, Tensor& out,
                      const vision::ImageGeometry& out_g);
// out [N, 3, H, W] in in's dtype: gray repeated, RGB copied, RGBA composited on white.
void vision_to_rgb(const Tensor& in, const vision::ImageGeometry& g, Tensor& out,
                   const vision::ImageGeometry& out_g);
// out [N, P, C*p*p] (in's dtype).
void vision_extract_patches(const Tensor& in, const vision::ImageGeometry& g, int64_t patch,
                            Tensor& out);
// Separable antialiased resize (horizontal pass, then vertical with the value transform).
void vision_resample(const Tensor& in, const vision::ResamplePlan& plan, Tensor& out);

}  // namespace marlin::cuda
