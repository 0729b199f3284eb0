// CUDA sampling kernels (sampling.cu): the choice is made on the device (argmax or Gumbel-max,
// top-k and top-p by radix select) and comes back as one 4-byte copy. Arguments are checked by
// ops/sampling_ops.cpp.
#pragma once

#include "marlin/sampler.h"

namespace marlin::cuda {

// As cpu::sample_token: an id in [0, V), or V when no logit is a number.
int64_t sample_token(const Tensor& logits, const SamplingParams& params);
// out[r] (i32 [R]) = the greedy choice of row r of logits [R, V] (contiguous), V when none.
void argmax_rows(const Tensor& logits, const Tensor& out);
// out = logits with the penalty applied at ids (i32 [n] on the device, in range).
void repetition_penalty(const Tensor& logits, const Tensor& ids, float penalty, Tensor& out);

}  // namespace marlin::cuda
