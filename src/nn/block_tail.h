// The tail of a pre-norm decoder block after its attention, shared by TransformerBlock and
// DeepseekBlock (models/deepseek.cpp).
#pragma once

#include "marlin/moe.h"
#include "marlin/nn.h"

namespace marlin {

// hidden += attn; the feed-forward (moe, else mlp) of post_norm(hidden); hidden += that; returns
// next_norm(hidden). Each add runs with the norm after it in one pass; a MoE takes the first
// add and norm into its router's launch (MoE::forward_add_norm).
Tensor residual_feed_forward(const Tensor& hidden, const Tensor& attn, const RMSNorm& post_norm, const MoE* moe,
                             const MLP& mlp, const RMSNorm& next_norm);

}  // namespace marlin
