// MLAAttention: the expanded form for a fresh prefill, the absorbed form over the latent cache.
#include "marlin/mla.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/env.h"
#include "marlin/attention.h"
#include "marlin/mla_ops.h"
#include "marlin/quant.h"

namespace marlin {
namespace {

constexpr const char* kOp = "MLAAttention";

void check_linear(const char* name, const QuantizedLinear& p, int64_t in, int64_t out) {
  MARLIN_CHECK(p.in_features() == in && p.out_features() == out, kOp, name, " must map ", in,
               " -> ", out, " features, got ", p.in_features(), " -> ", p.out_features());
}

void check_norm(const char* name, const RMSNorm& n, int64_t size) {
  MARLIN_CHECK(n.defined() && n.weight().numel() == size, kOp, name, " must have a weight of [",
               size, "]");
}

// From this many tokens a CUDA prompt's expanded attention runs as ordinary causal attention
// (attention_prefill: its GEMMs on the tensor cores through cuBLAS from 64 tokens on); the MLA
// kernel scores a query's keys one by one, which cost a 512-token GLM-4.7-Flash prompt most of
// its non-MoE time.
constexpr int64_t kPrefillAsAttentionMinTokens = 64;

// The head dim that attention_prefill takes for queries and keys of Dk and values of Dv: the
// smallest of its sizes that holds both (GLM-4.7-Flash 256 / 256: 256; DeepSeek-V3 192 / 128:
// 256), or 0 past them.
int64_t padded_head_dim(int64_t Dk, int64_t Dv) {
  for (int64_t D : {64, 80, 96, 128, 256})
    if (D >= std::max(Dk, Dv)) return D;
  return 0;
}

// Causal attention of a fresh prompt over the expanded heads: q [B, T, heads, Dn + Dr], keys
// [k_nope (per head) | k_rope (shared)], values v [B, T, heads, Dv], each padded with zeros to
// head dim D (they add nothing to a score or an output). Returns [B, T, heads, Dv].
Tensor expanded_prefill(const Tensor& q, const Tensor& k_nope, const Tensor& k_rope, const Tensor& v, float scale,
                        int64_t D) {
  const int64_t B = q.size(0), T = q.size(1), heads = q.size(2), Dk = q.size(3);
  const int64_t Dn = k_nope.size(3), Dr = k_rope.size(3), Dv = v.size(3);
  auto padded = [&](const Tensor& src) {  // [B, T, heads, D]: src in the first dims, zeros after
    if (src.size(3) == D) return src.contiguous();
    Tensor t = Tensor::empty({B, T, heads, D}, src.dtype(), src.device());
    t.fill_bytes(0);
    t.narrow(3, 0, src.size(3)).copy_from(src);
    return t;
  };
  const Tensor qd = padded(q), vd = padded(v);
  Tensor kd = Tensor::empty({B, T, heads, D}, q.dtype(), q.device());
  if (D > Dk) kd.fill_bytes(0);
  kd.narrow(3, 0, Dn).copy_from(k_nope);
  const Tensor rope = k_rope.contiguous();  // [B, T, 1, Dr], one copy for every head
  for (int64_t h = 0; h < heads; ++h) kd.narrow(2, h, 1).narrow(3, Dn, Dr).copy_from(rope);
  Tensor out = Tensor::empty({B, T, heads, Dv}, q.dtype(), q.device());
  for (int64_t b = 0; b < B; ++b) {
    const Tensor ob = ops::attention_prefill(qd.select(0, b), kd.select(0, b), vd.select(0, b), scale);
    if (B == 1 && D == Dv) return ob.view({B, T, heads, Dv});
    out.select(0, b).copy_from(ob.narrow(2, 0, Dv));
  }
  return out;
}

// kv_b_proj's weight [K = kv_lora_rank, N = heads * (nope + v)] as f32 on the CPU.
std::vector<float> kv_b_weight(const QuantizedLinear& kv_b) {
  const Tensor w = kv_b.bits() == 16 ? kv_b.weight().to(Device::cpu()).to(DType::f32)
                                     : dequantize_cpu(kv_b.qweight().to(Device::cpu()), DType::f32);
  return w.contiguous().to_float_vector();
}

}  // namespace

MLAAttention::MLAAttention(const MLAAttentionConfig& config, MLAProjections projections,
                           ops::RopeParams rope)
    : config_(config), proj_(std::move(projections)), rope_(std::move(rope)) {
  const MLAAttentionConfig& c = config_;
  MARLIN_CHECK(c.hidden_size > 0 && c.num_heads > 0 && c.kv_lora_rank > 0 &&
                   c.qk_nope_head_dim > 0 && c.qk_rope_head_dim > 0 && c.v_head_dim > 0 &&
                   c.q_lora_rank >= 0,
               kOp, "sizes must be positive: hidden ", c.hidden_size, ", heads ", c.num_heads,
               ", kv_lora_rank ", c.kv_lora_rank, ", qk_nope ", c.qk_nope_head_dim, ", qk_rope ",
               c.qk_rope_head_dim, ", v ", c.v_head_dim);
  MARLIN_CHECK(rope_.rotary_dim() == c.qk_rope_head_dim, kOp, "rope rotates ", rope_.rotary_dim(),
               " dims but qk_rope_head_dim is ", c.qk_rope_head_dim);
  check_projections();
  fuse_input_projections();
  scale_ = static_cast<float>(rope_.softmax_scale_factor /
                              std::sqrt(static_cast<double>(c.qk_head_dim())));
  derive_absorbed_weights();
}

void MLAAttention::check_projections() const {
  const MLAAttentionConfig& c = config_;
  const int64_t H = c.hidden_size, heads = c.num_heads;
  if (c.q_lora_rank > 0) {
    check_linear("q_a_proj", proj_.q_a_proj, H, c.q_lora_rank);
    check_norm("q_a_layernorm", proj_.q_a_layernorm, c.q_lora_rank);
    check_linear("q_b_proj", proj_.q_b_proj, c.q_lora_rank, heads * c.qk_head_dim());
  } else {
    check_linear("q_proj", proj_.q_proj, H, heads * c.qk_head_dim());
  }
  check_linear("kv_a_proj_with_mqa", proj_.kv_a_proj_with_mqa, H, c.latent_dim());
  check_norm("kv_a_layernorm", proj_.kv_a_layernorm, c.kv_lora_rank);
  check_linear("kv_b_proj", proj_.kv_b_proj, c.kv_lora_rank,
               heads * (c.qk_nope_head_dim + c.v_head_dim));
  check_linear("o_proj", proj_.o_proj, heads * c.v_head_dim, H);
}

void MLAAttention::derive_absorbed_weights() {
  const MLAAttentionConfig& c = config_;
  const int64_t heads = c.num_heads, R = c.kv_lora_rank, Dn = c.qk_nope_head_dim,
                Dv = c.v_head_dim, N = heads * (Dn + Dv);
  const std::vector<float> w = kv_b_weight(proj_.kv_b_proj);  // w[r * N + column]
  std::vector<float> uk(static_cast<size_t>(heads * Dn * R)), uv(static_cast<size_t>(heads * R * Dv));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < R; ++r) {
      const float* row = w.data() + r * N + h * (Dn + Dv);
      for (int64_t n = 0; n < Dn; ++n) uk[static_cast<size_t>((h * Dn + n) * R + r)] = row[n];
      for (int64_t v = 0; v < Dv; ++v) uv[static_cast<size_t>((h * R + r) * Dv + v)] = row[Dn + v];
    }
  const LayerPlacement& p = proj_.o_proj.placement();
  w_uk_ = Tensor::from_vector(uk, {heads, Dn, R}, DType::f32).to(p.dtype).to(p.device);
  w_uv_ = Tensor::from_vector(uv, {heads, R, Dv}, DType::f32).to(p.dtype).to(p.device);
}

void MLAAttention::fuse_input_projections() {
  const QuantizedLinear& q_in = config_.q_lora_rank > 0 ? proj_.q_a_proj : proj_.q_proj;
  input_proj_ = FusedLinear({q_in, proj_.kv_a_proj_with_mqa});
}

Tensor MLAAttention::forward(const Tensor& x, const Tensor& positions, KVCache* cache) const {
  constexpr const char* op = "MLAAttention::forward";
  const MLAAttentionConfig& c = config_;
  MARLIN_CHECK(x.dim() == 3 && x.size(2) == c.hidden_size, op, "x must be [B, T, ", c.hidden_size,
               "], got ", x.describe());
  const int64_t B = x.size(0), T = x.size(1), heads = c.num_heads;
  const int64_t R = c.kv_lora_rank, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim,
                Dv = c.v_head_dim, L = c.latent_dim();
  MARLIN_CHECK(positions.numel() == B * T, op, "positions must hold B*T=", B * T,
               " entries, got ", positions.describe());
  if (cache != nullptr) {
    const KVCacheConfig& kc = cache->config();
    MARLIN_CHECK(kc.keys_only && kc.num_kv_heads == 1 && kc.head_dim == L, op,
                 "the cache must be a latent cache (keys_only, 1 head of ", L,
                 " values per token), got ", kc.num_kv_heads, " heads of ", kc.head_dim,
                 kc.keys_only ? " (keys only)" : " with values");
  }

  // q [B, T, heads, nope | rope] and the compressed kv [B, T, 1, latent | k_rope]: views of one
  // GEMM's output when the input projections are fused (rows strided, last dim contiguous).
  const std::vector<Tensor> in = input_proj_.forward(x);
  const Tensor q = (c.q_lora_rank == 0 ? in[0] : proj_.q_b_proj.forward_rms_normed(in[0], proj_.q_a_layernorm))
                       .view({B, T, heads, Dn + Dr});
  const Tensor ckv = in[1].view({B, T, 1, L});
  const Tensor ckv_rows = ckv.view({B * T, L});
  const bool expand = cache == nullptr || cache->seq_len() == 0;
  // kv_b_proj reads a contiguous latent (prefill); the cache keeps it normalized in place.
  const RMSNorm& kv_norm = proj_.kv_a_layernorm;
  Tensor latent;
  if (expand) latent = kv_norm.forward(ckv_rows.narrow(1, 0, R));
  const Tensor q_rope_heads = q.view({B * T, heads, Dn + Dr}).narrow(2, Dn, Dr);
  // With a cache: RoPE, the latent's norm and the cache write in one launch
  // (KVCache::update_latent), when the norm weight has the activations' dtype.
  // MARLIN_FUSED_DECODE_ATTENTION=0 keeps the three launches, to measure against.
  static const bool fuse = !env_is("MARLIN_FUSED_DECODE_ATTENTION", "0");
  const bool one_launch = fuse && cache != nullptr && kv_norm.weight().dtype() == ckv.dtype();
  // The absorbed decode: W_UK's product in the same launch (MARLIN_MLA_ROPE_IN_WUK=0: apart).
  static const bool rope_in_w_uk = !env_is("MARLIN_MLA_ROPE_IN_WUK", "0");
  Tensor q_latent;
  if (one_launch && !expand && rope_in_w_uk) {
    q_latent = cache->update_latent_head_matmul(c.layer_idx, q_rope_heads, ckv.view({B * T, 1, L}), positions, rope_,
                                                kv_norm.weight(), kv_norm.eps(),
                                                q.view({B * T, heads, Dn + Dr}).narrow(2, 0, Dn), w_uk_);
  } else if (one_launch) {
    cache->update_latent(c.layer_idx, q_rope_heads, ckv.view({B * T, 1, L}), positions, rope_, kv_norm.weight(),
                         kv_norm.eps());
  } else {
    if (cache != nullptr) {
      const Tensor in_place = ckv_rows.narrow(1, 0, R);
      ops::rms_norm(in_place, kv_norm.weight(), kv_norm.eps(), in_place);
    }
    ops::rope(q_rope_heads, ckv.view({B * T, 1, L}).narrow(2, R, Dr), positions, rope_);
  }
  const Tensor q_nope = q.narrow(3, 0, Dn), q_rope = q.narrow(3, Dn, Dr);

  // With a cache each row writes at its own length and attends up to it; right padding
  // (step_new_tokens(), a batch of prompts of different lengths) is neither written nor read.
  Tensor seq_lens, new_tokens;
  if (cache != nullptr) {
    if (!one_launch) cache->update(c.layer_idx, ckv.transpose(1, 2), Tensor());
    seq_lens = cache->step_lengths();
    new_tokens = cache->step_new_tokens();
  } else {
    const std::vector<int32_t> lens(static_cast<size_t>(B), static_cast<int32_t>(T));
    seq_lens = Tensor::from_vector(lens, {B}, DType::i32).to(x.device());
  }

  Tensor out;  // [B, T, heads, Dv]
  if (expand) {
    // Per-head keys [nope | shared k_rope] and values from the latent of these T tokens.
    const Tensor kv = proj_.kv_b_proj.forward(latent).view({B, T, heads, Dn + Dv});
    // MARLIN_MLA_PREFILL_KERNEL=1 keeps the MLA kernel for every prompt, to measure against.
    static const bool mla_kernel_only = env_is("MARLIN_MLA_PREFILL_KERNEL", "1");
    const int64_t D = padded_head_dim(Dn + Dr, Dv);
    if (x.device().is_cuda() && T >= kPrefillAsAttentionMinTokens && !new_tokens.defined() && D > 0 &&
        !mla_kernel_only)
      out = expanded_prefill(q, kv.narrow(3, 0, Dn), ckv.narrow(3, R, Dr), kv.narrow(3, Dn, Dv), scale_, D);
    else
      out = ops::mla_attention(q_nope, q_rope, kv.narrow(3, 0, Dn), ckv.narrow(3, R, Dr),
                               kv.narrow(3, Dn, Dv), seq_lens, scale_, new_tokens);
  } else {
    // Absorbed: q_nope . (W_UK latent) = (W_UK^T q_nope) . latent, and the values W_UV latent
    // summed with the attention weights = W_UV (the weighted latent).
    if (!q_latent.defined()) q_latent = ops::mla_head_matmul(q.view({B * T, heads, Dn + Dr}).narrow(2, 0, Dn), w_uk_);
    const Tensor rows = cache->keys(c.layer_idx).transpose(1, 2);  // [B, S_max, 1, L]
    const Tensor cached_latent = rows.narrow(3, 0, R);
    out = ops::mla_attention_head_matmul(q_latent.view({B, T, heads, R}), q_rope, cached_latent,
                                         rows.narrow(3, R, Dr), cached_latent, seq_lens, scale_, w_uv_, new_tokens);
  }
  return proj_.o_proj.forward(out.view({B, T, heads * Dv}));
}

void MLAAttention::for_each_linear(const std::string& prefix, const LinearVisitor& visit) const {
  if (config_.q_lora_rank > 0) {
    visit(prefix + "q_a_proj", proj_.q_a_proj);
    visit(prefix + "q_b_proj", proj_.q_b_proj);
  } else {
    visit(prefix + "q_proj", proj_.q_proj);
  }
  visit(prefix + "kv_a_proj_with_mqa", proj_.kv_a_proj_with_mqa);
  visit(prefix + "kv_b_proj", proj_.kv_b_proj);
  visit(prefix + "o_proj", proj_.o_proj);
}

void MLAAttention::transform_linears(const std::string& prefix, const LinearTransform& transform) {
  if (config_.q_lora_rank > 0) {
    proj_.q_a_proj = transform(prefix + "q_a_proj", proj_.q_a_proj);
    proj_.q_b_proj = transform(prefix + "q_b_proj", proj_.q_b_proj);
  } else {
    proj_.q_proj = transform(prefix + "q_proj", proj_.q_proj);
  }
  proj_.kv_a_proj_with_mqa = transform(prefix + "kv_a_proj_with_mqa", proj_.kv_a_proj_with_mqa);
  proj_.kv_b_proj = transform(prefix + "kv_b_proj", proj_.kv_b_proj);
  proj_.o_proj = transform(prefix + "o_proj", proj_.o_proj);
  check_projections();
  fuse_input_projections();
  derive_absorbed_weights();  // from the new kv_b_proj
}

}  // namespace marlin
