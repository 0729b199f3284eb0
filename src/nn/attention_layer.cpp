// Attention (MHA/GQA with RoPE, optional q/k norm and sliding window), MLP and TransformerBlock.
#include <cmath>
#include <utility>
#include <vector>

#include "core/env.h"
#include "marlin/attention.h"
#include "marlin/moe.h"
#include "marlin/nn.h"
#include "nn/block_tail.h"

namespace marlin {

Attention::Attention(const AttentionConfig& config, QuantizedLinear q_proj, QuantizedLinear k_proj,
                     QuantizedLinear v_proj, QuantizedLinear o_proj, ops::RopeParams rope,
                     RMSNorm q_norm, RMSNorm k_norm, bool fuse_qkv)
    : config_(config),
      o_proj_(std::move(o_proj)),
      rope_(std::move(rope)),
      q_norm_(std::move(q_norm)),
      k_norm_(std::move(k_norm)) {
  constexpr const char* op = "Attention";
  const int64_t D = config.head_dim;
  MARLIN_CHECK(config.num_heads > 0 && config.num_kv_heads > 0 &&
                   config.num_heads % config.num_kv_heads == 0,
               op, "num_heads=", config.num_heads, " must be a positive multiple of num_kv_heads=",
               config.num_kv_heads);
  MARLIN_CHECK(q_proj.in_features() == k_proj.in_features() &&
                   q_proj.in_features() == v_proj.in_features(),
               op, "q_proj, k_proj and v_proj must read the same features, got ", q_proj.in_features(),
               ", ", k_proj.in_features(), " and ", v_proj.in_features());
  qkv_proj_ = FusedLinear({std::move(q_proj), std::move(k_proj), std::move(v_proj)}, fuse_qkv);
  check_projections();
  MARLIN_CHECK(q_norm_.defined() == k_norm_.defined(), op, "q_norm and k_norm come together");
  if (q_norm_.defined()) {
    MARLIN_CHECK(q_norm_.weight().numel() == D && k_norm_.weight().numel() == D, op,
                 "q_norm/k_norm weights must be [head_dim=", D, "]");
  }
  scale_ = static_cast<float>(rope_.softmax_scale_factor / std::sqrt(static_cast<double>(D)));
}

void Attention::check_projections() const {
  const int64_t H = config_.hidden_size, D = config_.head_dim;
  auto check = [&](const char* name, int64_t in, int64_t out, int64_t want_in, int64_t want_out) {
    MARLIN_CHECK(in == want_in && out == want_out, "Attention", name, " must map ", want_in, " -> ",
                 want_out, " features, got ", in, " -> ", out);
  };
  const int64_t in = qkv_proj_.in_features();
  check("q_proj", in, qkv_proj_.out_features(0), H, config_.num_heads * D);
  check("k_proj", in, qkv_proj_.out_features(1), H, config_.num_kv_heads * D);
  check("v_proj", in, qkv_proj_.out_features(2), H, config_.num_kv_heads * D);
  check("o_proj", o_proj_.in_features(), o_proj_.out_features(), config_.num_heads * D, H);
}

Tensor Attention::forward(const Tensor& x, const Tensor& positions, KVCache* cache) const {
  constexpr const char* op = "Attention::forward";
  MARLIN_CHECK(x.dim() == 3 && x.size(2) == config_.hidden_size, op, "x must be [B, T, ",
               config_.hidden_size, "], got ", x.describe());
  const int64_t B = x.size(0), T = x.size(1), D = config_.head_dim;
  const int64_t Hq = config_.num_heads, Hkv = config_.num_kv_heads;
  MARLIN_CHECK(positions.numel() == B * T, op, "positions must hold B*T=", B * T,
               " entries, got ", positions.describe());
  // One GEMM when fused: q, k and v are then head views into its rows (strided, no copy);
  // the norms, rope and the cache write take them as they are.
  const std::vector<Tensor> qkv = qkv_proj_.forward(x);
  Tensor q = qkv[0].view({B * T, Hq, D});
  Tensor k = qkv[1].view({B * T, Hkv, D});
  Tensor v = qkv[2].view({B * T, Hkv, D});
  if (q_norm_.defined()) {
    q = q_norm_.forward(q);
    k = k_norm_.forward(k);
  }
  Tensor out;
  const int64_t window = config_.sliding_window;
  if (cache == nullptr) ops::rope(q, k, positions, rope_);
  if (cache != nullptr) {
    // Each row writes at its own length and attends up to it, both read on the device
    // (step_lengths() is a buffer of the cache): a decode step launches the same kernels
    // whatever the lengths are. Right padding (step_new_tokens()) is neither written nor read.
    // A decode step (one token a row): RoPE, the cache append and attention in one call
    // (KVCache::attend_rotated, one launch on CUDA). MARLIN_FUSED_DECODE_ATTENTION=0 keeps the
    // separate launches below, to measure against.
    static const bool fused = !env_is("MARLIN_FUSED_DECODE_ATTENTION", "0");
    if (fused && T == 1 && !cache->step_new_tokens().defined())
      return o_proj_.forward(
          cache->attend_rotated(config_.layer_idx, q, k, v, positions, rope_, scale_, window).view({B, T, Hq * D}));
    // q and k are rotated in the launch that writes k and v (ops::rope_cache_write).
    cache->update_rotated(config_.layer_idx, q, k, v, positions, rope_);
    const Tensor& keys = cache->keys(config_.layer_idx);
    const Tensor& values = cache->values(config_.layer_idx);
    const Tensor& seq_lens = cache->step_lengths();
    const Tensor& new_tokens = cache->step_new_tokens();
    if (T == 1 && !new_tokens.defined()) {
      // The attention kernels take contiguous q: a no-op at batch 1, one 2-D copy otherwise.
      out = ops::attention_decode(q.view({B, Hq, D}).contiguous(), keys, values, seq_lens, scale_, window);
    } else if (cache->seq_len() > 0 || B > 1) {
      out = ops::attention_extend(q.view({B, T, Hq, D}).contiguous(), keys, values, seq_lens, scale_, window,
                                  new_tokens);
    }
  }
  if (!out.defined()) {
    // A fresh sequence: the new keys are all there is, causal prefill over them.
    if (B == 1) {
      out = ops::attention_prefill(q.contiguous(), k.contiguous(), v.contiguous(), scale_, window);
    } else {
      out = Tensor::empty({B, T, Hq, D}, q.dtype(), q.device());
      for (int64_t b = 0; b < B; ++b) {
        out.select(0, b).copy_from(ops::attention_prefill(
            q.narrow(0, b * T, T).contiguous(), k.narrow(0, b * T, T).contiguous(),
            v.narrow(0, b * T, T).contiguous(), scale_, window));
      }
    }
  }
  return o_proj_.forward(out.contiguous().view({B, T, Hq * D}));
}

MLP::MLP(QuantizedLinear gate_proj, QuantizedLinear up_proj, QuantizedLinear down_proj,
         bool fuse_gate_up)
    : down_proj_(std::move(down_proj)) {
  MARLIN_CHECK(gate_proj.in_features() == up_proj.in_features(), "MLP", "gate ",
               gate_proj.in_features(), "->", gate_proj.out_features(), " and up ", up_proj.in_features(),
               "->", up_proj.out_features(), " must read the same features");
  gate_up_proj_ = FusedLinear({std::move(gate_proj), std::move(up_proj)}, fuse_gate_up);
  check_projections();
}

void MLP::check_projections() const {
  const int64_t in = gate_up_proj_.in_features();
  const int64_t gate = gate_up_proj_.out_features(0), up = gate_up_proj_.out_features(1);
  MARLIN_CHECK(gate == up && down_proj_.in_features() == gate && down_proj_.out_features() == in, "MLP",
               "gate ", in, "->", gate, ", up ", in, "->", up, " and down ", down_proj_.in_features(),
               "->", down_proj_.out_features(), " do not chain");
}

Tensor MLP::forward(const Tensor& x) const {
  // Fused, gate and up are the two halves of one [..., 2I] output, read by one silu_mul.
  const std::vector<Tensor> gate_up = gate_up_proj_.forward(x);
  return down_proj_.forward_silu_mul(gate_up[0], gate_up[1]);
}

TransformerBlock::TransformerBlock(RMSNorm input_layernorm, Attention self_attn,
                                   RMSNorm post_attention_layernorm, MLP mlp)
    : input_layernorm_(std::move(input_layernorm)),
      self_attn_(std::move(self_attn)),
      post_attention_layernorm_(std::move(post_attention_layernorm)),
      mlp_(std::move(mlp)) {}

TransformerBlock::TransformerBlock(RMSNorm input_layernorm, Attention self_attn,
                                   RMSNorm post_attention_layernorm, std::shared_ptr<const MoE> moe)
    : input_layernorm_(std::move(input_layernorm)),
      self_attn_(std::move(self_attn)),
      post_attention_layernorm_(std::move(post_attention_layernorm)),
      moe_(std::move(moe)) {
  MARLIN_CHECK(moe_ != nullptr, "TransformerBlock", "the MoE feed-forward is null");
}

Tensor TransformerBlock::feed_forward(const Tensor& x) const {
  return moe_ ? moe_->forward(x) : mlp_.forward(x);
}

Tensor TransformerBlock::forward(const Tensor& hidden, const Tensor& positions,
                                 KVCache* cache) const {
  const Tensor attn = self_attn_.forward(input_layernorm_.forward(hidden), positions, cache);
  // hidden += attn, then the second norm, in one pass.
  const Tensor normed = ops::add_rms_norm(hidden, attn, post_attention_layernorm_.weight(),
                                          post_attention_layernorm_.eps());
  ops::add(hidden, feed_forward(normed), hidden);
  return hidden;
}

Tensor TransformerBlock::forward_fused(const Tensor& hidden, const Tensor& normed,
                                       const Tensor& positions, KVCache* cache,
                                       const RMSNorm& next_norm) const {
  const Tensor attn = self_attn_.forward(normed, positions, cache);
  return residual_feed_forward(hidden, attn, post_attention_layernorm_, moe_.get(), mlp_, next_norm);
}

Tensor residual_feed_forward(const Tensor& hidden, const Tensor& attn, const RMSNorm& post_norm, const MoE* moe,
                             const MLP& mlp, const RMSNorm& next_norm) {
  const Tensor ffn = moe != nullptr ? moe->forward_add_norm(hidden, attn, post_norm)
                                    : mlp.forward(ops::add_rms_norm(hidden, attn, post_norm.weight(), post_norm.eps()));
  return ops::add_rms_norm(hidden, ffn, next_norm.weight(), next_norm.eps());
}

}  // namespace marlin
