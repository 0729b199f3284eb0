// CPU attention kernels (attention.cpp): the reference of the CUDA ones. Arguments are checked
// by ops/attention_ops.cpp.
#pragma once

#include "marlin/tensor.h"

namespace marlin::cpu {

// q, k, v [T, H, D] -> out [T, Hq, D], causal.
void attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t sliding_window, Tensor& out);
// q [B, T, Hq, D] at the end of caches [B, Hkv, S_max, D] of lengths seq_lens (i32 [B]).
void attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& seq_lens, float scale, int64_t sliding_window, Tensor& out);
// cache[b, h, start + t, :] = new_values[b, h, t, :] (new_values of any strides).
void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start);

}  // namespace marlin::cpu
