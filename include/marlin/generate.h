// Text generation (the original generate and GenerationConfig): prefill the prompt through the KV
// cache, then decode one token per step with the Sampler until max_new_tokens or an eos token.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "marlin/kv_cache.h"
#include "marlin/model.h"
#include "marlin/tensor.h"

namespace marlin {

// The original dataclass's fields and defaults. temperature 0 or do_sample = false is greedy
// (after the repetition penalty, as Transformers does it).
struct GenerationConfig {
  int64_t max_new_tokens = 256;
  float temperature = 0.7f;
  float top_p = 0.9f;
  int64_t top_k = 50;
  float repetition_penalty = 1.1f;
  // One id or several; empty: never stop early.
  std::vector<int64_t> eos_token_id = {2};
  int64_t pad_token_id = 0;
  bool do_sample = true;
  // Not in the original: the sampler's seed, so runs can be repeated; nullopt draws one.
  std::optional<uint64_t> seed;
  // Not in the original: on CUDA, decode steps replay one captured CUDA graph (DecodeGraph) and
  // greedy rows are chosen on the device, so a step brings back only the chosen ids. false runs
  // every step eagerly (the reference path); the environment variable MARLIN_CUDA_GRAPH=1 or 0
  // overrides this field. Models whose decode step cannot be captured always run eagerly.
  bool cuda_graph = true;
};

// Called with each generated token id as soon as it is chosen. For a batch, once per step for
// every row still generating, in row order.
using Streamer = std::function<void(int64_t token_id)>;
// The same with the row (index of the prompt) the token belongs to.
using RowStreamer = std::function<void(int64_t row, int64_t token_id)>;

// Filled by generate when asked: where the time went.
struct GenerationStats {
  int64_t prompt_tokens = 0;     // of the longest row
  int64_t generated_tokens = 0;  // all rows together
  double prefill_ms = 0;         // prompt forward and the first token's choice
  double decode_ms = 0;          // the steps after it (a CUDA graph's capture excluded)
  double capture_ms = 0;         // capturing and instantiating the decode step's CUDA graph
  bool cuda_graph = false;       // the decode steps replayed a CUDA graph
};

// input_ids: [T] or [B, T] (i32 or i64, any device), T >= 1, B prompts of T tokens run together
// through one cache. Returns i32 on the CPU, [T + n] or [B, T + n]: the prompt followed by the
// generated tokens (an eos included); a row that stops before the others is filled up with
// pad_token_id. kv_cache: reset and reused when given (it must hold B rows and T +
// max_new_tokens positions); else one of exactly that size is made. A prompt plus
// max_new_tokens beyond the model's max_position_embeddings or the cache is an error before any
// work, as are invalid sampling parameters.
Tensor generate(const CausalLM& model, const Tensor& input_ids, const GenerationConfig& config = {},
                KVCache* kv_cache = nullptr, const Streamer& streamer = nullptr,
                GenerationStats* stats = nullptr);

// A padded batch, as Transformers' tokenizers make it: attention_mask (input_ids' shape, any
// integer, bool or float dtype, any device) is 1 on each row's prompt tokens and 0 on its
// padding, which may sit on either side (left or right) but not inside the prompt. Each row
// generates as if it ran alone. Returns [B, T + n]: each row of input_ids as given (padding
// included) followed by its generated tokens, then pad_token_id. The cache needs the longest
// prompt + max_new_tokens positions.
Tensor generate(const CausalLM& model, const Tensor& input_ids, const Tensor& attention_mask,
                const GenerationConfig& config, KVCache* kv_cache = nullptr,
                const Streamer& streamer = nullptr, GenerationStats* stats = nullptr);

// Prompts of any lengths, run as one batch: each row is right-padded to the longest, the cache
// keeps every row's own length, and attention sees only each row's own tokens, so every row's
// tokens (and logits) are those of running it alone; each stops at its own eos. Returns each
// row's generated tokens only (no prompt, no padding). The streamer is called once per step for
// every row still generating, in row order.
std::vector<std::vector<int64_t>> generate(const CausalLM& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerationConfig& config = {},
                                           const RowStreamer& streamer = nullptr,
                                           GenerationStats* stats = nullptr);

}  // namespace marlin
