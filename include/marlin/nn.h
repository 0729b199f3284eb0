// The layers of llama-family decoders (the original API's MetalQuantizedLinear, MetalAttention,
// MetalTransformerBlock): each holds its weights on one device and runs through ops::. The
// activation dtype is chosen at construction: f32 on the CPU (exact comparison with
// Transformers in fp32), f16/bf16 on either device.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "marlin/kv_cache.h"
#include "marlin/ops_nn.h"
#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin {

class MoE;  // marlin/moe.h: a decoder block's feed-forward may be one
class RMSNorm;

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
  // forward(norm.forward(x)): on CUDA for one row (a batch-1 decode step) of a small projection
  // the norm runs inside the GEMM's launch (the same values: the normalized row is rms_norm's);
  // else the two apart.
  Tensor forward_rms_normed(const Tensor& x, const RMSNorm& norm) const;

  // forward(silu_mul(gate, up)): on CUDA for one row of an FP8 weight (a batch-1 decode step's
  // down projection) the SwiGLU runs inside the GEMM's launch (the same values); else the two
  // apart.
  Tensor forward_silu_mul(const Tensor& gate, const Tensor& up) const;

  // The layers side by side along N, one GEMM where there were several (fused QKV, gate+up).
  // The weight layout is per output column, so the result holds exactly the parts' weights.
  // The parts must pass can_concat: one in_features, bits, group size and placement, and all
  // or none with a bias. The weights are copied on their device.
  static QuantizedLinear concat(const std::vector<QuantizedLinear>& parts);
  static bool can_concat(const std::vector<QuantizedLinear>& parts);
  // Output columns [start, start + count) as a layer of their own (weights copied): a part of
  // a concatenated layer, bit for bit as it went in.
  QuantizedLinear columns(int64_t start, int64_t count) const;
  // This 16-bit layer quantized to `bits` (8, 4, 2) with `group_size` along K: the weights it
  // holds (in its activation dtype) are quantized, then placed as the constructor does.
  QuantizedLinear quantized(int bits, int group_size, ScaleMethod scales = ScaleMethod::absmax) const;
  // This quantized layer reading its packed weights and scales from `packed` and `scales` (the
  // same shapes and values, e.g. slices of one allocation that many layers share), without the
  // GPU tile layout (QuantizedWeight::tiled): for layers read only by kernels of the canonical
  // layout (MoE experts). gemm_q still works on it, through the canonical-layout kernels.
  QuantizedLinear with_weight_storage(const Tensor& packed, const Tensor& scales) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  int bits() const { return bits_; }
  int group_size() const { return group_size_; }
  const Tensor& weight() const { return weight_; }             // [K, N], 16-bit layers only
  const QuantizedWeight& qweight() const { return qweight_; }  // quantized layers only
  const Tensor& bias() const { return bias_; }                 // f32 [N] or undefined
  const LayerPlacement& placement() const { return placement_; }

 private:
  int64_t in_features_ = 0, out_features_ = 0;
  int bits_ = 16, group_size_ = 128;
  LayerPlacement placement_;
  Tensor weight_;
  QuantizedWeight qweight_;
  Tensor bias_;
};

// Linear layers that read the same input (q/k/v, gate/up): one GEMM over their weights
// concatenated along N when fusing is asked for and QuantizedLinear::can_concat allows it (the
// parts share bits and group size), else one GEMM per part. Either way each part's output
// is what its own layer computes (bit for bit on the CPU).
class FusedLinear {
 public:
  FusedLinear() = default;
  explicit FusedLinear(std::vector<QuantizedLinear> parts, bool fuse = true);

  // x [..., in] -> one [..., out_i] per part; fused, they are views of one [..., sum out_i]
  // output (last dim contiguous, rows strided), which the nn ops and view() accept.
  std::vector<Tensor> forward(const Tensor& x) const;

  size_t size() const { return out_features_.size(); }
  bool fused() const { return fused_.in_features() > 0; }
  bool fuse_requested() const { return fuse_; }
  int64_t in_features() const;
  int64_t out_features(size_t part) const { return out_features_.at(part); }
  // Part i as a layer of its own (fused: its columns, copied); an empty layer when the
  // FusedLinear is (a default-constructed MLP's).
  QuantizedLinear part(size_t i) const;
  std::vector<QuantizedLinear> parts() const;
  const QuantizedLinear& fused_layer() const { return fused_; }  // fused() only

 private:
  bool fuse_ = true;
  QuantizedLinear fused_;              // all parts side by side, when fused
  std::vector<QuantizedLinear> parts_;  // otherwise
  std::vector<int64_t> out_features_;
};

// Visiting and replacing the linear layers of a layer or model by their Hugging Face module
// paths ("model.layers.0.self_attn.q_proj", "lm_head"), one path per checkpoint linear: a fused
// projection is visited part by part and fused again afterwards where the new parts allow.
using LinearVisitor = std::function<void(const std::string& name, const QuantizedLinear& layer)>;
using LinearTransform =
    std::function<QuantizedLinear(const std::string& name, const QuantizedLinear& layer)>;

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
// projections), optional per-head RMSNorm of q and k before RoPE (Qwen3). With fuse_qkv (the
// model loaders' default, ModelLoadOptions::fuse_projections) q, k and v are one GEMM
// (FusedLinear) where their bits and group sizes agree.
class Attention {
 public:
  Attention() = default;
  Attention(const AttentionConfig& config, QuantizedLinear q_proj, QuantizedLinear k_proj,
            QuantizedLinear v_proj, QuantizedLinear o_proj, ops::RopeParams rope,
            RMSNorm q_norm = {}, RMSNorm k_norm = {}, bool fuse_qkv = false);

  // x [B, T, hidden] for B sequences of T new tokens each at positions [B * T] (i32, on the
  // layer's device). Without a cache, T tokens attend causally to each other; with one, row
  // b's new keys and values are written at its own length (cache->lengths(), on the device)
  // and attended over with its history, right padding of a step begun with per-row new
  // tokens excluded (the caller begins the step and ends it once every layer has run).
  // Returns [B, T, hidden].
  Tensor forward(const Tensor& x, const Tensor& positions, KVCache* cache = nullptr) const;

  const AttentionConfig& config() const { return config_; }
  // q, k and v by value: parts of a fused QKV are copied out of it.
  QuantizedLinear q_proj() const { return qkv_proj_.part(0); }
  QuantizedLinear k_proj() const { return qkv_proj_.part(1); }
  QuantizedLinear v_proj() const { return qkv_proj_.part(2); }
  const FusedLinear& qkv_proj() const { return qkv_proj_; }
  const QuantizedLinear& o_proj() const { return o_proj_; }
  const RMSNorm& q_norm() const { return q_norm_; }
  const RMSNorm& k_norm() const { return k_norm_; }

  // prefix + "q_proj", "k_proj", "v_proj", "o_proj" (prefix ends with a dot, or is empty).
  void for_each_linear(const std::string& prefix, const LinearVisitor& visit) const;
  void transform_linears(const std::string& prefix, const LinearTransform& transform);

 private:
  void check_projections() const;

  AttentionConfig config_;
  FusedLinear qkv_proj_;
  QuantizedLinear o_proj_;
  ops::RopeParams rope_;
  RMSNorm q_norm_, k_norm_;
  float scale_ = 1.0f;
};

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)). With fuse_gate_up (the model loaders'
// default for dense layers; MoE experts keep theirs apart) gate and up are one GEMM
// (FusedLinear, the halves side by side feeding one silu_mul) where their bits agree.
class MLP {
 public:
  MLP() = default;
  MLP(QuantizedLinear gate_proj, QuantizedLinear up_proj, QuantizedLinear down_proj,
      bool fuse_gate_up = false);
  Tensor forward(const Tensor& x) const;
  // gate and up by value: parts of a fused gate+up are copied out of it.
  QuantizedLinear gate_proj() const { return gate_up_proj_.part(0); }
  QuantizedLinear up_proj() const { return gate_up_proj_.part(1); }
  const FusedLinear& gate_up_proj() const { return gate_up_proj_; }
  const QuantizedLinear& down_proj() const { return down_proj_; }

  // prefix + "gate_proj", "up_proj", "down_proj".
  void for_each_linear(const std::string& prefix, const LinearVisitor& visit) const;
  void transform_linears(const std::string& prefix, const LinearTransform& transform);

 private:
  void check_projections() const;

  FusedLinear gate_up_proj_;
  QuantizedLinear down_proj_;
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
  // The same block with each residual add fused into the norm after it (one pass instead of
  // two, the decode path of a stack of blocks): `normed` is input_layernorm(hidden), made by
  // the caller or the previous block's forward_fused; hidden is updated in place as forward()
  // does, and the result is next_norm(hidden), the next block's input_layernorm or the model's
  // final norm. Bit for bit forward() followed by next_norm.
  Tensor forward_fused(const Tensor& hidden, const Tensor& normed, const Tensor& positions,
                       KVCache* cache, const RMSNorm& next_norm) const;

  // prefix + "self_attn.q_proj", ..., prefix + "mlp.down_proj". An MoE block's experts are
  // not visited, and replacing its linears is an error (the MoE owns their device layout).
  void for_each_linear(const std::string& prefix, const LinearVisitor& visit) const;
  void transform_linears(const std::string& prefix, const LinearTransform& transform);

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
