// Shared by the vision ops and pipelines (ops/vision_ops.cpp, ops/vision_pipelines.cpp):
// argument checks and the backend dispatch of the resample kernel.
#pragma once

#include <vector>

#include "kernels/vision_common.h"
#include "marlin/tensor.h"

namespace marlin::vision::detail {

// Checks an image or batch (rank 3 or 4, u8 or f32, 1/3/4 channels, no zero-sized side) and
// returns its geometry; `image` is made contiguous in place.
ImageGeometry checked_geometry(Tensor& image, bool nhwc, const char* op);
// The tensor shape of a geometry: rank 4 when batched, else rank 3.
Shape image_shape(const ImageGeometry& g, bool batched);
// Copies per-channel mean/std (one value, or one per channel) into the plan's arrays.
void set_mean_std(ResamplePlan& plan, const std::vector<float>& mean, const std::vector<float>& std,
                  int64_t channels, const char* op);
// Runs the resample kernel of in's device into the preallocated, contiguous `out`.
void run_resample(const Tensor& in, const ResamplePlan& plan, Tensor& out);

}  // namespace marlin::vision::detail
