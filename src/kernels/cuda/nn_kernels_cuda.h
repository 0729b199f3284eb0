// CUDA backend of the nn building-block ops (ops_nn.h), tested against kernels/cpu/nn_kernels.h.
// Arguments are already checked by ops/nn_ops.cpp; every launcher runs on the current stream of
// the tensors' device and checks the launch.
#pragma once

#include <cstdint>

#include "marlin/tensor.h"

namespace marlin::cuda {

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out);
void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out);
void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
          bool interleaved, float attention_factor);
// rope(q, k), then k and v [tokens = B x T, heads, dim] written to the caches [B, heads, S, dim]
// (any strides) as attention_cache_write_kv writes them, in one launch.
void rope_cache_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                      const Tensor& inv_freq, bool interleaved, float attention_factor, Tensor& k_cache,
                      Tensor& v_cache, const Tensor& starts, const Tensor& counts);
// MLA's step into its latent cache [B, 1, S, R + Dr]: q_rope and k_rope rotated in place, the
// latent [tokens, 1, R] RMS-normalized with norm_weight (of its dtype) into the cache only, k_rope
// after it; one launch (checked by ops::mla_rope_cache_write).
void mla_rope_cache_write(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                          const Tensor& inv_freq, bool interleaved, float attention_factor,
                          const Tensor& norm_weight, float eps, Tensor& cache, const Tensor& starts,
                          const Tensor& counts);
void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out);
// Rows of ids outside [0, V) become NaN. With `check` (and no graph capture in progress) it
// waits for the kernel and returns the first such position, else -1.
int64_t embedding(const Tensor& ids, const Tensor& table, const Tensor& out, bool check);
void add(const Tensor& a, const Tensor& b, const Tensor& out);
void softmax_last_dim(const Tensor& x, const Tensor& out);
// out (contiguous, x's shape) = x converted to out's float dtype, rounding to nearest even.
void cast(const Tensor& x, const Tensor& out);

}  // namespace marlin::cuda
