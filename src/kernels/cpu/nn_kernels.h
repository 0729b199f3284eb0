// CPU backend of the nn building-block ops (ops_nn.h): the reference the CUDA versions are tested
// against. Arguments are already checked by ops/nn_ops.cpp; tensors may have strided leading
// dims (kernels/row_layout.h), the last dim is contiguous.
#pragma once

#include "marlin/tensor.h"

namespace marlin::cpu {

// out = rms_norm(x) [rows, N]; weight [N] of any float dtype.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out);
// residual += x in residual's dtype, then out = rms_norm(residual).
void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out);
// q [T, Hq, D], k [T, Hk, D] (k may be undefined) rotated in place over the first
// 2 * inv_freq.numel() dims; positions i32 [T], inv_freq f32.
void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
          bool interleaved, float attention_factor);
// out = silu(gate) * up, all [rows, I].
void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out);
// out[t] = table[ids[t]]; ids already checked to lie in [0, V).
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out);
// out = a + b, contiguous, one dtype.
void add(const Tensor& a, const Tensor& b, const Tensor& out);
// out (f32) = softmax of each row of x.
void softmax_last_dim(const Tensor& x, const Tensor& out);

}  // namespace marlin::cpu
