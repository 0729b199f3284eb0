// The layers of llama-family decoders (the original API's MetalQuantizedLinear, MetalAttention,
// MetalTransformerBlock): each holds its weights on one device and runs through ops::. The
// activation dtype is chosen at construction: f32 on the CPU (exact comparison with
// Transformers in fp32), f16/bf16 on either device.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "marlin/kv_cache.h"
#include "marlin/ops_nn.h"
#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin {

class MoE;  // marlin/moe.h: a decoder block's feed-forward may be one

// Where and in what a layer computes; weights are converted to it once, at construction.
struct LayerPlacement {
  Device device = Device::cpu();
  DType dtype = DType::f32;  // activations; f32 only on the CPU
};

// y = x @ W^T (+ bias) for a Hugging Face linear weight W [out, in], stored as [K = in, N = out]:
// 16 bits keeps it in the activation dtype; 2/4/8 bits quantize it (INT2, FP4 E2M1, FP8 E4M3)
// with `group_size` along K, once, and the GEMM dequantizes on the fly.
class QuantizedLinear {
 public:
  QuantizedLinear() = default;
  // weight [out, in] and bias [out] (may be undefined) in any float dtype on any device.
  QuantizedLinear(const Tensor& weight, const Tensor& bias, int bits, int group_size,
                  const LayerPlacement& placement, ScaleMethod scales = ScaleMethod::absmax);
  // An already quantized weight (a saved checkpoint's packed + scales, canonical layout, any
  // device): placed and prepared for the GEMM as the quantizing constructor does, never
  // re-quantized. bias [out] may be undefined.
  static QuantizedLinear from_quantized(const QuantizedWeight& qweight, const Tensor& bias,
                                        const LayerPlacement& placement);

  // x [..., in] -> [..., out] in x's dtype, which must be the placement's.
  Tensor forward(const Tensor& x) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  int bits() const { return bits_; }
  int group_size() const { return group_size_; }
  const Tensor& weight() const { return weight_; }             // [K, N], 16-bit layers only
  const QuantizedWeight& qweight() const { return qweight_; }  // quantized layers only
  const Tensor& bias() const { return bias_; }                 // f32 [N] or undefined

 private:
  int64_t in_features_ = 0, out_features_ = 0;
  int bits_ = 16, group_size_ = 128;
  LayerPlacement placement_;
  Tensor weight_;
  QuantizedWeight qweight_;
  Tensor bias_;
};

// Token embeddings: table [V, H] rows at ids (i32 or i64, any shape) -> [..., H].
class Embedding {
 public:
  Embedding() = default;
  Embedding(const Tensor& table, const LayerPlacement& placement);
  Tensor forward(const Tensor& ids) const;
  const Tensor& table() const { return table_; }  // [V, H] in the activation dtype

 private:
  Tensor table_;
};

class RMSNorm {
 public:
  RMSNorm() = default;
  RMSNorm(const Tensor& weight, double eps, const LayerPlacement& placement);
  Tensor forward(const Tensor& x) const { return ops::rms_norm(x, weight_, eps_); }
  const Tensor& weight() const { return weight_; }
  double eps() const { return eps_; }
  bool defined() const { return weight_.defined(); }

 private:
  Tensor weight_;
  double eps_ = 1e-6;
};

struct AttentionConfig {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // GQA: num_heads is a multiple of it
  int64_t head_dim = 0;
  int64_t sliding_window = 0;  // 0: full causal attention
  int64_t layer_idx = 0;       // which layer of the KV cache this attention writes
};

// Multi-head / grouped-query attention with rotary embeddings: optional q/k/v bias (in the
// projections), optional per-head RMSNorm of q and k before RoPE (Qwen3).
class Attention {
 public:
  Attention() = default;
  Attention(const AttentionConfig& config, QuantizedLinear q_proj, QuantizedLinear k_proj,
            QuantizedLinear v_proj, QuantizedLinear o_proj, ops::RopeParams rope,
            RMSNorm q_norm = {}, RMSNorm k_norm = {});

  // x [B, T, hidden] for B sequences of T new tokens each at positions [B * T] (i32, on the
  // layer's device). Without a cache, T tokens attend causally to each other; with one, row
  // b's new keys and values are written at its own length (cache->lengths(), on the device)
  // and attended over with its history, right padding of a step begun with per-row new
  // tokens excluded (the caller begins the step and ends it once every layer has run).
  // Returns [B, T, hidden].
  Tensor forward(const Tensor& x, const Tensor& positions, KVCache* cache = nullptr) const;

  const AttentionConfig& config() const { return config_; }
  const QuantizedLinear& q_proj() const { return q_proj_; }
  const QuantizedLinear& k_proj() const { return k_proj_; }
  const QuantizedLinear& v_proj() const { return v_proj_; }
  const QuantizedLinear& o_proj() const { return o_proj_; }
  const RMSNorm& q_norm() const { return q_norm_; }
  const RMSNorm& k_norm() const { return k_norm_; }

 private:
  AttentionConfig config_;
  QuantizedLinear q_proj_, k_proj_, v_proj_, o_proj_;
  ops::RopeParams rope_;
  RMSNorm q_norm_, k_norm_;
  float scale_ = 1.0f;
};

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
class MLP {
 public:
  MLP() = default;
  MLP(QuantizedLinear gate_proj, QuantizedLinear up_proj, QuantizedLinear down_proj);
  Tensor forward(const Tensor& x) const;
  const QuantizedLinear& gate_proj() const { return gate_proj_; }
  const QuantizedLinear& up_proj() const { return up_proj_; }
  const QuantizedLinear& down_proj() const { return down_proj_; }

 private:
  QuantizedLinear gate_proj_, up_proj_, down_proj_;
};

// Pre-norm decoder layer: x += attn(norm1(x)); x += mlp(norm2(x)).
class TransformerBlock {
 public:
  TransformerBlock() = default;
  TransformerBlock(RMSNorm input_layernorm, Attention self_attn, RMSNorm post_attention_layernorm,
                   MLP mlp);
  // An MoE layer: the feed-forward is `moe` (marlin/moe.h) instead of a dense MLP.
  TransformerBlock(RMSNorm input_layernorm, Attention self_attn, RMSNorm post_attention_layernorm,
                   std::shared_ptr<const MoE> moe);
  // hidden [B, T, H] (contiguous), the residual stream, is updated in place (no copy per layer)
  // and returned.
  Tensor forward(const Tensor& hidden, const Tensor& positions, KVCache* cache = nullptr) const;
  const RMSNorm& input_layernorm() const { return input_layernorm_; }
  const Attention& self_attn() const { return self_attn_; }
  const RMSNorm& post_attention_layernorm() const { return post_attention_layernorm_; }
  const MLP& mlp() const { return mlp_; }
  const MoE* moe() const { return moe_.get(); }  // null in a dense layer

 private:
  RMSNorm input_layernorm_;
  Attention self_attn_;
  RMSNorm post_attention_layernorm_;
  MLP mlp_;
  std::shared_ptr<const MoE> moe_;

  Tensor feed_forward(const Tensor& x) const;  // the MoE, else the MLP
};

}  // namespace marlin
