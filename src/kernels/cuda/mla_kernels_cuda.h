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
// mla_attention (writing x, its output viewed [B T, H, Dv]) then mla_head_matmul(x, w, out), the
// product's launch merging the attention's splits itself (no merge launch). False, doing nothing,
// where that does not apply (not the absorbed form's shared latent, or the product's vector kernel
// does not fit).
bool mla_attention_head_matmul(const kernels::MlaAttentionArgs& args, DType dtype, int device, const Tensor& x,
                               const Tensor& w, Tensor& out);
// mla_head_matmul and mla_rope_cache_write (nn_kernels_cuda.h) in one launch, the absorbed decode
// step's W_UK product beside its RoPE and latent cache write (x must not overlap q_rope, k_rope
// or the latent). False, doing nothing, where the product's vector kernel does not apply.
bool mla_head_matmul_rope_cache_write(const Tensor& x, const Tensor& w, Tensor& out, const Tensor& q_rope,
                                      const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                                      const Tensor& inv_freq, bool interleaved, float attention_factor,
                                      const Tensor& norm_weight, float eps, Tensor& cache, const Tensor& starts,
                                      const Tensor& counts);
// Tests: force the number of sequence splits of the attention kernel (0 = automatic).
void set_mla_attention_splits(int splits);

}  // namespace marlin::cuda
