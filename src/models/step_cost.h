// What one decode step must read and what a prefill must compute, counted from a loaded model's
// own layers: the numerators of `marlin bench generate`'s roofline fractions.
#pragma once

#include <cstdint>
#include <optional>

#include "marlin/model.h"
#include "marlin/moe.h"

namespace marlin {

// Bytes one decode step of `batch` rows reads at least once from memory.
struct DecodeStepBytes {
  int64_t quantized_weights = 0;  // packed codes + fp16 scales of the 2/4/8-bit linears
  int64_t dense_weights = 0;      // 16-bit linears (lm_head included) and every linear's bias
  int64_t norm_weights = 0;       // RMSNorm weights (per layer, q/k norms, final)
  int64_t embedding_rows = 0;     // the batch's rows of the embedding table
  int64_t kv_cache = 0;           // keys and values (MLA: latent rows) over the cached positions
  // Of quantized_weights + dense_weights, the routed experts' share: the experts a step is
  // expected to choose in every MoE layer (top_k of them at batch 1), not all of them.
  int64_t routed_experts = 0;
  int64_t weights() const {
    return quantized_weights + dense_weights + norm_weights + embedding_rows;
  }
  int64_t total() const { return weights() + kv_cache; }
};

// The bytes of a decode step with `kv_positions` cached positions per row (the mean over a
// run's steps). std::nullopt for a model class this accounting does not know yet.
// MoE layers count the router, the shared experts and the routed experts a step reads: with
// `batch` rows routed uniformly, E * (1 - (1 - top_k / E)^batch) distinct experts (top_k at
// batch 1), each at the mean bytes of the layer's experts (their own bit widths). MLA layers
// count their query and kv_a projections, the absorbed W_UK and W_UV (decode reads them instead
// of kv_b_proj), o_proj, the latent norms and the latent cache (kv_lora_rank +
// qk_rope_head_dim values per position and layer).
std::optional<DecodeStepBytes> decode_step_bytes(const CausalLM& model, int64_t batch,
                                                 double kv_positions);

// Distinct experts `tokens` uniformly routed tokens choose on average: top_k for one token,
// E * (1 - (1 - top_k / E)^tokens) for more.
double expected_distinct_experts(int64_t num_experts, int64_t top_k, int64_t tokens);

// Bytes one call of `moe` reads when its tokens choose `routed_experts` distinct experts (may be
// fractional: an expected or mean count): the router (f32 [E, H]) and its score bias, the shared
// experts in full, and that many routed experts at the mean bytes of the layer's experts (exact
// when they share one width). Only quantized_weights, dense_weights and routed_experts are set.
DecodeStepBytes moe_call_bytes(const MoE& moe, double routed_experts);

// Bytes every weight of the model holds where it lives: all linears (every expert, not only
// the chosen ones; MLA's kv_b_proj and its absorbed W_UK/W_UV), biases, norms, routers, the
// whole embedding table. With kv_cache_bytes, the floor under a run's peak memory.
// std::nullopt for a model class this accounting does not know.
std::optional<int64_t> resident_weight_bytes(const CausalLM& model);

// Bytes of the KV cache model.make_cache(max_seq_len, batch) allocates (MLA: the latent rows).
int64_t kv_cache_bytes(const CausalLM& model, int64_t max_seq_len, int64_t batch);

// Model FLOPs of one prefill of `batch` prompts of `prompt_len` tokens: 2 per weight a token
// multiplies per token (every linear, lm_head included as forward computes logits at every
// position; in an MoE layer the router, top_k experts and the shared experts; in an MLA layer
// the expanded form's kv_b_proj too), plus the causal attention's QK^T and PV (2 * heads *
// (qk dims + v dims) per query-key pair, key <= query). std::nullopt for other model classes.
std::optional<double> prefill_flops(const CausalLM& model, int64_t batch, int64_t prompt_len);

}  // namespace marlin
