// decode_step_bytes / prefill_flops over the layers of the model classes of src/models.
#include "models/step_cost.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "marlin/moe.h"
#include "models/deepseek.h"
#include "models/llama.h"

namespace marlin {
namespace {

int64_t weight_bytes(const QuantizedLinear& l) {
  return l.bits() == 16 ? static_cast<int64_t>(l.weight().nbytes())
                        : static_cast<int64_t>(l.qweight().nbytes());
}

int64_t bias_bytes(const QuantizedLinear& l) {
  return l.bias().defined() ? static_cast<int64_t>(l.bias().nbytes()) : 0;
}

int64_t norm_bytes(const RMSNorm& n) {
  return n.defined() ? static_cast<int64_t>(n.weight().nbytes()) : 0;
}

void add_linear(DecodeStepBytes& out, const QuantizedLinear& l) {
  (l.bits() == 16 ? out.dense_weights : out.quantized_weights) += weight_bytes(l);
  out.dense_weights += bias_bytes(l);
}

// A fused gate+up is read as the one layer it is.
void add_mlp(DecodeStepBytes& out, const MLP& m) {
  const FusedLinear& gu = m.gate_up_proj();
  if (gu.fused()) {
    add_linear(out, gu.fused_layer());
  } else {
    for (size_t i = 0; i < gu.size(); ++i) add_linear(out, gu.part(i));
  }
  add_linear(out, m.down_proj());
}

// A step of `batch` rows reads the expected number of distinct experts they choose, never all
// E: counting all would put the roofline many times too low.
void add_moe(DecodeStepBytes& out, const MoE& moe, int64_t batch) {
  const DecodeStepBytes b = moe_call_bytes(
      moe, expected_distinct_experts(moe.num_experts(), moe.routing().top_k, batch));
  out.quantized_weights += b.quantized_weights;
  out.dense_weights += b.dense_weights;
  out.routed_experts += b.routed_experts;
}

void add_embedding_rows(DecodeStepBytes& out, const Embedding& embed, int64_t batch) {
  const Tensor& table = embed.table();
  out.embedding_rows = batch * table.size(1) * static_cast<int64_t>(table.element_size());
}

int64_t cache_bytes(int64_t layers, int64_t batch, int64_t values_per_position, DType dtype,
                    double kv_positions) {
  return static_cast<int64_t>(static_cast<double>(layers * batch * values_per_position) *
                              static_cast<double>(dtype_size(dtype)) * kv_positions);
}

std::optional<DecodeStepBytes> deepseek_step_bytes(const DeepseekModel& m, int64_t batch,
                                                   double kv_positions) {
  const ModelConfig& c = m.config();
  DecodeStepBytes out;
  for (const DeepseekBlock& b : m.layers()) {
    const MLAProjections& p = b.self_attn().projections();
    if (p.q_proj.in_features() > 0) add_linear(out, p.q_proj);
    if (p.q_a_proj.in_features() > 0) {
      add_linear(out, p.q_a_proj);
      add_linear(out, p.q_b_proj);
    }
    add_linear(out, p.kv_a_proj_with_mqa);
    // Decode reads the absorbed W_UK and W_UV (activation dtype), never kv_b_proj itself.
    out.dense_weights += static_cast<int64_t>(b.self_attn().absorbed_uk().nbytes() +
                                              b.self_attn().absorbed_uv().nbytes());
    add_linear(out, p.o_proj);
    out.norm_weights += norm_bytes(b.input_layernorm()) + norm_bytes(b.post_attention_layernorm()) +
                        norm_bytes(p.q_a_layernorm) + norm_bytes(p.kv_a_layernorm);
    if (const MoE* moe = b.moe()) {
      add_moe(out, *moe, batch);
    } else {
      add_mlp(out, b.mlp());
    }
  }
  add_linear(out, m.lm_head());
  out.norm_weights += norm_bytes(m.norm());
  add_embedding_rows(out, m.embed_tokens(), batch);
  const MlaConfig& mla = *c.mla;
  out.kv_cache = cache_bytes(c.num_hidden_layers, batch, mla.kv_lora_rank + mla.qk_rope_head_dim,
                             m.dtype(), kv_positions);
  return out;
}

}  // namespace

double expected_distinct_experts(int64_t num_experts, int64_t top_k, int64_t tokens) {
  const double E = static_cast<double>(num_experts);
  const double k = static_cast<double>(std::min(top_k, num_experts));
  if (num_experts <= 0 || tokens <= 0) return 0;
  return tokens == 1 ? k : E * (1.0 - std::pow(1.0 - k / E, static_cast<double>(tokens)));
}

DecodeStepBytes moe_call_bytes(const MoE& moe, double routed_experts) {
  DecodeStepBytes out;
  out.dense_weights += static_cast<int64_t>(moe.router_weight().nbytes());
  if (moe.e_score_correction_bias().defined())
    out.dense_weights += static_cast<int64_t>(moe.e_score_correction_bias().nbytes());
  if (moe.has_shared_experts()) add_mlp(out, moe.shared_experts());
  DecodeStepBytes all;  // every expert's bytes, split as quantized / 16-bit
  for (const MLP& e : moe.experts()) add_mlp(all, e);
  const double E = static_cast<double>(moe.experts().size());
  if (E == 0) return out;
  const auto share = [&](int64_t bytes) {
    return static_cast<int64_t>(std::llround(static_cast<double>(bytes) / E * routed_experts));
  };
  const int64_t q = share(all.quantized_weights), d = share(all.dense_weights);
  out.quantized_weights += q;
  out.dense_weights += d;
  out.routed_experts += q + d;
  return out;
}

std::optional<DecodeStepBytes> decode_step_bytes(const CausalLM& model, int64_t batch,
                                                 double kv_positions) {
  if (const auto* deepseek = dynamic_cast<const DeepseekModel*>(&model))
    return deepseek_step_bytes(*deepseek, batch, kv_positions);
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  if (llama == nullptr || model.config().mla) return std::nullopt;
  const ModelConfig& c = model.config();
  DecodeStepBytes out;
  for (const TransformerBlock& b : llama->layers()) {
    const FusedLinear& qkv = b.self_attn().qkv_proj();
    if (qkv.fused()) {
      add_linear(out, qkv.fused_layer());
    } else {
      for (size_t i = 0; i < qkv.size(); ++i) add_linear(out, qkv.part(i));
    }
    add_linear(out, b.self_attn().o_proj());
    // MoE blocks (qwen3_moe, mixtral) read the chosen experts only.
    if (const MoE* moe = b.moe()) {
      add_moe(out, *moe, batch);
    } else {
      add_mlp(out, b.mlp());
    }
    out.norm_weights += norm_bytes(b.input_layernorm()) + norm_bytes(b.post_attention_layernorm()) +
                        norm_bytes(b.self_attn().q_norm()) + norm_bytes(b.self_attn().k_norm());
  }
  add_linear(out, llama->lm_head());
  out.norm_weights += norm_bytes(llama->norm());
  add_embedding_rows(out, llama->embed_tokens(), batch);
  out.kv_cache = cache_bytes(c.num_hidden_layers, batch, 2 * c.num_key_value_heads * c.head_dim,
                             model.dtype(), kv_positions);
  return out;
}

std::optional<int64_t> resident_weight_bytes(const CausalLM& model) {
  DecodeStepBytes out;  // its fields as buckets; every expert counted
  const auto moe_all = [&](const MoE& moe) {
    out.dense_weights += static_cast<int64_t>(moe.router_weight().nbytes());
    if (moe.e_score_correction_bias().defined())
      out.dense_weights += static_cast<int64_t>(moe.e_score_correction_bias().nbytes());
    if (moe.has_shared_experts()) add_mlp(out, moe.shared_experts());
    for (const MLP& e : moe.experts()) add_mlp(out, e);
  };
  if (const auto* m = dynamic_cast<const DeepseekModel*>(&model)) {
    for (const DeepseekBlock& b : m->layers()) {
      b.self_attn().for_each_linear("", [&](const std::string&, const QuantizedLinear& l) {
        add_linear(out, l);
      });
      out.dense_weights += static_cast<int64_t>(b.self_attn().absorbed_uk().nbytes() +
                                                b.self_attn().absorbed_uv().nbytes());
      const MLAProjections& p = b.self_attn().projections();
      out.norm_weights += norm_bytes(b.input_layernorm()) + norm_bytes(b.post_attention_layernorm()) +
                          norm_bytes(p.q_a_layernorm) + norm_bytes(p.kv_a_layernorm);
      if (const MoE* moe = b.moe()) {
        moe_all(*moe);
      } else {
        add_mlp(out, b.mlp());
      }
    }
    add_linear(out, m->lm_head());
    out.norm_weights += norm_bytes(m->norm());
    return out.weights() + static_cast<int64_t>(m->embed_tokens().table().nbytes());
  }
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  if (llama == nullptr || model.config().mla) return std::nullopt;
  for (const TransformerBlock& b : llama->layers()) {
    const FusedLinear& qkv = b.self_attn().qkv_proj();
    if (qkv.fused()) {
      add_linear(out, qkv.fused_layer());
    } else {
      for (size_t i = 0; i < qkv.size(); ++i) add_linear(out, qkv.part(i));
    }
    add_linear(out, b.self_attn().o_proj());
    if (const MoE* moe = b.moe()) {
      moe_all(*moe);
    } else {
      add_mlp(out, b.mlp());
    }
    out.norm_weights += norm_bytes(b.input_layernorm()) + norm_bytes(b.post_attention_layernorm()) +
                        norm_bytes(b.self_attn().q_norm()) + norm_bytes(b.self_attn().k_norm());
  }
  add_linear(out, llama->lm_head());  // a tied lm_head is its own [K, N] copy
  out.norm_weights += norm_bytes(llama->norm());
  return out.weights() + static_cast<int64_t>(llama->embed_tokens().table().nbytes());
}

int64_t kv_cache_bytes(const CausalLM& model, int64_t max_seq_len, int64_t batch) {
  const ModelConfig& c = model.config();
  const int64_t per_position = c.mla ? c.mla->kv_lora_rank + c.mla->qk_rope_head_dim
                                     : 2 * c.num_key_value_heads * c.head_dim;
  return c.num_hidden_layers * batch * max_seq_len * per_position *
         static_cast<int64_t>(dtype_size(model.dtype()));
}

namespace {

double params(const QuantizedLinear& l) {
  return static_cast<double>(l.in_features()) * static_cast<double>(l.out_features());
}

// A fused q/k/v or gate+up counts its parts' weights, fused or not.
double params(const FusedLinear& f) {
  double p = 0;
  for (size_t i = 0; i < f.size(); ++i)
    p += static_cast<double>(f.in_features()) * static_cast<double>(f.out_features(i));
  return p;
}

double mlp_params(const MLP& m) { return params(m.gate_up_proj()) + params(m.down_proj()); }

// The weights one token multiplies in an MoE layer: the router, top_k experts (of the layer's
// mean expert size) and the shared experts.
double moe_params_per_token(const MoE& moe) {
  double p = static_cast<double>(moe.num_experts()) * static_cast<double>(moe.hidden_size());
  if (!moe.experts().empty()) {
    double experts = 0;
    for (const MLP& e : moe.experts()) experts += mlp_params(e);
    p += static_cast<double>(moe.routing().top_k) * experts / static_cast<double>(moe.experts().size());
  }
  if (moe.has_shared_experts()) p += mlp_params(moe.shared_experts());
  return p;
}

// Query-key pairs of a causal prompt: query t sees min(t + 1, window) keys (window 0: all).
double causal_pairs(int64_t prompt_len, int64_t window) {
  double pairs = 0;
  for (int64_t t = 0; t < prompt_len; ++t)
    pairs += static_cast<double>(window > 0 ? std::min(t + 1, window) : t + 1);
  return pairs;
}

}  // namespace

std::optional<double> prefill_flops(const CausalLM& model, int64_t batch, int64_t prompt_len) {
  const ModelConfig& c = model.config();
  const double tokens = static_cast<double>(batch * prompt_len);
  double per_token = 0, attention = 0;  // weights a token multiplies; score and value FLOPs
  if (const auto* llama = dynamic_cast<const LlamaModel*>(&model)) {
    for (size_t i = 0; i < llama->layers().size(); ++i) {
      const TransformerBlock& b = llama->layers()[i];
      per_token += params(b.self_attn().qkv_proj()) + params(b.self_attn().o_proj());
      per_token += b.moe() != nullptr ? moe_params_per_token(*b.moe()) : mlp_params(b.mlp());
      const int64_t window = c.uses_sliding_window(static_cast<int64_t>(i)) ? c.sliding_window.value_or(0) : 0;
      attention += 4.0 * static_cast<double>(batch * c.num_attention_heads * c.head_dim) *
                   causal_pairs(prompt_len, window);
    }
    per_token += params(llama->lm_head());
  } else if (const auto* deepseek = dynamic_cast<const DeepseekModel*>(&model)) {
    // The prompt runs the expanded form: kv_b_proj on every token, then scores over
    // qk_nope + qk_rope dims and values of v_head_dim per head.
    const MlaConfig& mla = *c.mla;
    for (const DeepseekBlock& b : deepseek->layers()) {
      const MLAProjections& p = b.self_attn().projections();
      per_token += params(p.q_proj) + params(p.q_a_proj) + params(p.q_b_proj) +
                   params(p.kv_a_proj_with_mqa) + params(p.kv_b_proj) + params(p.o_proj);
      per_token += b.moe() != nullptr ? moe_params_per_token(*b.moe()) : mlp_params(b.mlp());
      attention += 2.0 * static_cast<double>(batch * c.num_attention_heads) *
                   static_cast<double>(mla.qk_head_dim() + mla.v_head_dim) * causal_pairs(prompt_len, 0);
    }
    per_token += params(deepseek->lm_head());
  } else {
    return std::nullopt;
  }
  return 2.0 * tokens * per_token + attention;
}

}  // namespace marlin
