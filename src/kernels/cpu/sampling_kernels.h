// CPU sampling kernels (sampling.cpp): the reference of kernels/cuda/sampling.cu. Arguments are
// checked by ops/sampling_ops.cpp.
#pragma once

#include <vector>

#include "marlin/sampler.h"

namespace marlin::cpu {

// logits: V contiguous f32/f16/bf16 values. Returns an id in [0, V), or V when no logit is
// a number.
int64_t sample_token(const Tensor& logits, const SamplingParams& params);
// out = logits with the penalty applied at the (distinct, in-range) ids.
void repetition_penalty(const Tensor& logits, const std::vector<int64_t>& ids, float penalty,
                        Tensor& out);

}  // namespace marlin::cpu
