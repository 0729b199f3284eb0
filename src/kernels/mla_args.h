// The strided operands of ops::mla_attention as plain values, shared by the CPU and CUDA
// kernels: each 4-D view [B, rows, heads, D] becomes a pointer and three element strides, with a
// head stride of 0 where one row serves every head (the latent cache, MLA's k_rope).
#pragma once

#include <cstdint>

#include "marlin/tensor.h"

namespace marlin::kernels {

struct MlaOperand {
  const void* data = nullptr;
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;  // in elements
};

struct MlaAttentionArgs {
  MlaOperand q_nope, q_rope, k_nope, k_rope, v;
  const int32_t* seq_lens = nullptr;  // on the tensors' device
  // Right-padded rows: row b's real queries, null when every row has all T.
  const int32_t* new_tokens = nullptr;
  void* out = nullptr;                // [B, T, H, Dv] contiguous
  int B = 0, T = 0, H = 0, S = 0, Dn = 0, Dr = 0, Dv = 0;
  float scale = 1.0f;
};

// t is [B, rows, heads, D] with a contiguous last dim; heads of size 1 broadcast.
inline MlaOperand mla_operand(const Tensor& t) {
  MlaOperand o;
  o.data = t.data_ptr();
  o.batch_stride = t.size(0) == 1 ? 0 : t.strides()[0];
  o.row_stride = t.strides()[1];
  o.head_stride = t.size(2) == 1 ? 0 : t.strides()[2];
  return o;
}

}  // namespace marlin::kernels
