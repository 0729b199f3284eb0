// decode_step_bytes / prefill_flops over the layers of the model classes of src/models.
#include "models/step_cost.h"

#include <algorithm>
#include <functional>

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

// Every linear layer of a llama-family model, lm_head last.
void for_each_llama_linear(const LlamaModel& m, const std::function<void(const QuantizedLinear&)>& fn) {
  // A fused q/k/v or gate+up is visited as the one layer it is (its bytes and FLOPs are the
  // parts' sums), not split into copies of its parts.
  auto fused = [&](const FusedLinear& f) {
    if (f.fused()) {
      fn(f.fused_layer());
    } else {
      for (size_t i = 0; i < f.size(); ++i) fn(f.part(i));
    }
  };
  for (const TransformerBlock& b : m.layers()) {
    fused(b.self_attn().qkv_proj());
    fn(b.self_attn().o_proj());
    fused(b.mlp().gate_up_proj());
    fn(b.mlp().down_proj());
  }
  fn(m.lm_head());
}

}  // namespace

std::optional<DecodeStepBytes> decode_step_bytes(const CausalLM& model, int64_t batch,
                                                 double kv_positions) {
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  // MoE blocks (qwen3_moe, mixtral through LlamaModel) read the routed experts only: not
  // counted yet, so no figure rather than one without the experts.
  if (llama == nullptr || model.config().moe || model.config().mla) return std::nullopt;
  const ModelConfig& c = model.config();
  DecodeStepBytes out;
  for_each_llama_linear(*llama, [&](const QuantizedLinear& l) {
    (l.bits() == 16 ? out.dense_weights : out.quantized_weights) += weight_bytes(l);
    out.dense_weights += bias_bytes(l);
  });
  for (const TransformerBlock& b : llama->layers()) {
    out.norm_weights += norm_bytes(b.input_layernorm()) + norm_bytes(b.post_attention_layernorm()) +
                        norm_bytes(b.self_attn().q_norm()) + norm_bytes(b.self_attn().k_norm());
  }
  out.norm_weights += norm_bytes(llama->norm());
  const Tensor& table = llama->embed_tokens().table();
  out.embedding_rows = batch * table.size(1) * static_cast<int64_t>(table.element_size());
  const double per_position = 2.0 * static_cast<double>(c.num_key_value_heads * c.head_dim) *
                              static_cast<double>(dtype_size(model.dtype()));
  out.kv_cache = static_cast<int64_t>(static_cast<double>(c.num_hidden_layers * batch) *
                                      per_position * kv_positions);
  return out;
}

std::optional<double> prefill_flops(const CausalLM& model, int64_t batch, int64_t prompt_len) {
  const auto* llama = dynamic_cast<const LlamaModel*>(&model);
  if (llama == nullptr || model.config().moe || model.config().mla) return std::nullopt;
  const ModelConfig& c = model.config();
  const double tokens = static_cast<double>(batch * prompt_len);
  double flops = 0;
  for_each_llama_linear(*llama, [&](const QuantizedLinear& l) {
    flops += 2.0 * tokens * static_cast<double>(l.in_features() * l.out_features());
  });
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    // Query t attends to min(t + 1, window) keys.
    const int64_t window = c.uses_sliding_window(i) ? c.sliding_window.value_or(0) : 0;
    double pairs = 0;
    for (int64_t t = 0; t < prompt_len; ++t)
      pairs += static_cast<double>(window > 0 ? std::min(t + 1, window) : t + 1);
    flops += 4.0 * static_cast<double>(batch * c.num_attention_heads * c.head_dim) * pairs;
  }
  return flops;
}

}  // namespace marlin
