// CUDA kernels of multi-head latent attention (mla_attention.cu): flash-decoding style attention
// over latent or expanded keys, and the per-head matrix product of the absorbed form. Arguments
// are checked by ops/mla_ops.cpp; the launchers run on the device's current stream.
#pragma once

#include "kernels/mla_args.h"
#include "marlin/tensor.h"

namespace marlin::cuda {

// f16 or bf16 operands; Dn, Dv <= 512, Dr <= 64.
void mla_attention(const kernels::MlaAttentionArgs& args, DType dtype, int device);
void mla_head_matmul(const Tensor& x, const Tensor& w, Tensor& out);
// Tests: force the number of sequence splits of the attention kernel (0 = automatic).
void set_mla_attention_splits(int splits);

}  // namespace marlin::cuda
