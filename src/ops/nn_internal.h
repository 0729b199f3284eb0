// Checks shared by the ops of ops_nn.h and those elsewhere that take the same arguments.
#pragma once

#include "marlin/ops_nn.h"

namespace marlin::ops {

// Everything ops::rope checks (q and k [tokens, heads, head_dim] with a contiguous head_dim, one
// activation dtype and device, i32 positions of the tokens, params.inv_freq f32), naming `op`.
void check_rope(const char* op, const Tensor& q, const Tensor& k, const Tensor& positions,
                const RopeParams& params);

// Everything ops::mla_head_matmul checks (naming `op`); returns its output, not yet written.
Tensor head_matmul_output(const char* op, const Tensor& x, const Tensor& w);

}  // namespace marlin::ops
