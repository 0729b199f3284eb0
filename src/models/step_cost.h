// What one decode step must read and what a prefill must compute, counted from a loaded model's
// own layers: the numerators of `marlin bench generate`'s roofline fractions.
#pragma once

#include <cstdint>
#include <optional>

#include "marlin/model.h"

namespace marlin {

// Bytes one decode step of `batch` rows reads at least once from memory.
struct DecodeStepBytes {
  int64_t quantized_weights = 0;  // packed codes + fp16 scales of the 2/4/8-bit linears
  int64_t dense_weights = 0;      // 16-bit linears (lm_head included) and every linear's bias
  int64_t norm_weights = 0;       // RMSNorm weights (per layer, q/k norms, final)
  int64_t embedding_rows = 0;     // the batch's rows of the embedding table
  int64_t kv_cache = 0;           // keys and values of every layer over the cached positions
  int64_t weights() const {
    return quantized_weights + dense_weights + norm_weights + embedding_rows;
  }
  int64_t total() const { return weights() + kv_cache; }
};

// The bytes of a decode step with `kv_positions` cached positions per row (the mean over a
// run's steps). std::nullopt for a model class this accounting does not know yet.
std::optional<DecodeStepBytes> decode_step_bytes(const CausalLM& model, int64_t batch,
                                                 double kv_positions);

// Model FLOPs of one prefill of `batch` prompts of `prompt_len` tokens: 2 per weight of every
// linear (lm_head included, as forward computes logits at every position) per token, plus the
// causal attention's QK^T and PV (4 * head_dim * heads per query-key pair, key <= query).
std::optional<double> prefill_flops(const CausalLM& model, int64_t batch, int64_t prompt_len);

}  // namespace marlin
