// Internal to the models: what LlamaModel and DeepseekModel share: loading a linear layer, and
// the ids, context and positions checks of forward.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "marlin/attention.h"
#include "marlin/error.h"
#include "marlin/model.h"
#include "marlin/nn.h"
#include "models/quantized_checkpoint.h"
#include "models/weight_source.h"

namespace marlin {

// The linear `prefix` ([out, in] as a Hugging Face weight, with a bias where `bias`) of a model
// loaded with `options`: kept in 16 bits where modules_not_converted names it, read packed where
// the checkpoint stores it so (`stored_quantized`: a save_quantized checkpoint holds its quantized
// layers packed, the others in 16 bits; nothing is quantized again), else quantized to
// options.bits.
inline QuantizedLinear load_model_linear(const WeightSource& w, const ModelLoadOptions& options,
                                         const LayerPlacement& placement, bool stored_quantized,
                                         const std::string& prefix, int64_t in, int64_t out, bool bias) {
  const Tensor b = w.get_if(bias, prefix + ".bias", {out});
  if (module_matches(options.modules_not_converted, prefix))
    return QuantizedLinear(w.get(prefix + ".weight", {out, in}), b, 16, options.group_size, placement);
  if (stored_quantized || w.has(prefix + ".weight_packed"))
    return load_packed_linear(w, prefix, in, out, b, options.bits, options.group_size, placement);
  return QuantizedLinear(w.get(prefix + ".weight", {out, in}), b, options.bits, options.group_size,
                         placement, options.scales);
}

// ids [T] or [B, T] as [B, T], checked to hold at least one token.
inline Tensor ids_as_batch(const Tensor& ids, const char* op) {
  MARLIN_CHECK(ids.defined() && (ids.dim() == 1 || ids.dim() == 2), op,
               "ids must be [T] or [B, T], got ", ids.defined() ? ids.describe() : "an undefined tensor");
  const Tensor ids2 = ids.dim() == 1 ? ids.contiguous().view({1, ids.size(0)}) : ids;
  MARLIN_CHECK(ids2.size(0) >= 1 && ids2.size(1) >= 1, op, "ids must hold at least one token, got ",
               ids.describe());
  return ids2;
}

// Positions up to `end` (the longest row once the new tokens are in) within the model's context.
inline void check_context(const ModelConfig& config, int64_t end, const char* op) {
  MARLIN_CHECK(config.max_position_embeddings <= 0 || end <= config.max_position_embeddings,
               op, "positions up to ", end, " exceed the model's context of ",
               config.max_position_embeddings, " tokens (max_position_embeddings in ",
               config.source, ")");
}

// Checks that `cache` (may be null) was made for this model and can take B rows of T new
// tokens (a step begun by the caller, per-row new tokens of a padded batch, is kept), and returns
// the longest row once these tokens are in. MLA models keep only keys (the latent rows).
inline int64_t step_end(const KVCache* cache, int64_t B, int64_t T, const ModelConfig& config,
                        const LayerPlacement& placement, bool keys_only, const char* op) {
  if (cache == nullptr) return T;
  MARLIN_CHECK(cache->batch_size() == B, op, "the cache holds ", cache->batch_size(),
               " sequences but ids has ", B);
  const KVCacheConfig& kc = cache->config();
  MARLIN_CHECK(kc.num_layers == config.num_hidden_layers && kc.keys_only == keys_only &&
                   kc.dtype == placement.dtype && cache->device() == placement.device,
               op, "the cache was not made for this model (use make_cache)");
  MARLIN_CHECK(cache->step_tokens() == 0 || cache->step_tokens() == T, op,
               "the cache's step in flight holds ", cache->step_tokens(),
               " tokens per row but ids has T=", T);
  return cache->step_tokens() == 0 ? cache->seq_len() + T : cache->step_seq_len();
}

// The positions of the T new tokens of each of B rows, [B * T] i32 on `device`: with a cache,
// computed on the device from its lengths (with one token per row they are the lengths
// themselves), beginning the cache's step unless the caller has (per-row new tokens of a padded
// batch); without one, 0..T-1 per row.
inline Tensor step_positions(KVCache* cache, int64_t B, int64_t T, Device device) {
  if (cache != nullptr) {
    if (cache->step_tokens() == 0) cache->begin_step(T);
    return T == 1 ? cache->lengths() : ops::sequence_positions(cache->lengths(), T);
  }
  std::vector<int32_t> pos(static_cast<size_t>(B * T));
  for (int64_t i = 0; i < B * T; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(i % T);
  return Tensor::from_vector(pos, {B * T}, DType::i32).to(device);
}

}  // namespace marlin
