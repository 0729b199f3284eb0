// CPU kernels of multi-head latent attention (mla_attention.cpp): the reference of the CUDA
// ones. Arguments are checked by ops/mla_ops.cpp.
#pragma once

#include "kernels/mla_args.h"
#include "marlin/tensor.h"

namespace marlin::cpu {

// args.out [B, T, H, Dv] in `dtype` (f32, f16 or bf16), every operand of that dtype.
void mla_attention(const kernels::MlaAttentionArgs& args, DType dtype);
// out [M, H, N] = x [M, H, K] (strided rows) @ w [H, K, N] per head.
void mla_head_matmul(const Tensor& x, const Tensor& w, Tensor& out);

}  // namespace marlin::cpu
