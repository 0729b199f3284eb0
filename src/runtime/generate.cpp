// generate: prefill, then one forward pass per token through the KV cache, choosing each token
// with the Sampler. Only CausalLM's abstract interface is used, so this layer needs no model code.
#include "marlin/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "marlin/error.h"
#include "marlin/sampler.h"

namespace marlin {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Checked before any work, so a bad value fails fast instead of after a long prefill.
void check_config(const GenerationConfig& c) {
  MARLIN_CHECK(c.max_new_tokens >= 0, "generate", "max_new_tokens must be >= 0, got ",
               c.max_new_tokens);
  MARLIN_CHECK(std::isfinite(c.temperature) && c.temperature >= 0.0f, "generate",
               "temperature must be finite and >= 0 (0 is greedy), got ", c.temperature);
  MARLIN_CHECK(c.top_k >= 0, "generate", "top_k must be >= 0 (0 is off), got ", c.top_k);
  MARLIN_CHECK(c.top_p > 0.0f && c.top_p <= 1.0f, "generate",
               "top_p must be in (0, 1] (1 is off), got ", c.top_p);
  MARLIN_CHECK(std::isfinite(c.repetition_penalty) && c.repetition_penalty > 0.0f, "generate",
               "repetition_penalty must be finite and > 0 (1 is off), got ",
               c.repetition_penalty);
}

void check_length(const CausalLM& model, int64_t prompt_len, int64_t max_new_tokens) {
  MARLIN_CHECK(prompt_len >= 1, "generate", "the prompt must hold at least one token");
  const int64_t context = model.config().max_position_embeddings;
  MARLIN_CHECK(context <= 0 || prompt_len + max_new_tokens <= context, "generate", "prompt (",
               prompt_len, " tokens) + max_new_tokens (", max_new_tokens,
               ") exceeds the model's context of ", context, " positions (", model.config().source,
               ")");
}

// Token ids of the last position of each row of logits [B, T, V].
std::vector<int64_t> choose(Sampler& sampler, const Tensor& logits, const GenerationConfig& c,
                            const std::vector<std::vector<int64_t>>& history,
                            const std::vector<bool>& done) {
  const bool greedy = !c.do_sample || c.temperature == 0.0f;
  const int64_t last = logits.size(1) - 1;
  std::vector<int64_t> ids(history.size(), c.pad_token_id);
  static const std::vector<int64_t> kNoHistory;
  for (size_t b = 0; b < history.size(); ++b) {
    if (done[b]) continue;
    const Tensor row = logits.select(0, static_cast<int64_t>(b)).select(0, last);
    // The penalty looks at the prompt and every generated token, as Transformers' does.
    const bool penalize = c.repetition_penalty != 1.0f;
    ids[b] = sampler.sample(row, greedy ? 0.0f : c.temperature, greedy ? 1.0f : c.top_p,
                            greedy ? 0 : c.top_k, c.repetition_penalty,
                            penalize ? history[b] : kNoHistory);
  }
  return ids;
}

Tensor ids_tensor(const std::vector<int64_t>& values, int64_t rows) {
  std::vector<int32_t> narrow(values.begin(), values.end());
  return Tensor::from_vector(narrow, {rows, static_cast<int64_t>(values.size()) / rows},
                             DType::i32);
}

// prompts: B rows of one length. Returns each row's generated tokens (an eos included).
std::vector<std::vector<int64_t>> run_batch(const CausalLM& model,
                                            const std::vector<std::vector<int64_t>>& prompts,
                                            const GenerationConfig& c, KVCache* kv_cache,
                                            const Streamer& streamer, GenerationStats* stats) {
  check_config(c);
  const auto B = static_cast<int64_t>(prompts.size());
  const auto T = static_cast<int64_t>(prompts.front().size());
  check_length(model, T, c.max_new_tokens);
  const int64_t needed = T + c.max_new_tokens;
  std::optional<KVCache> own_cache;
  if (kv_cache) {
    MARLIN_CHECK(kv_cache->batch_size() == B, "generate", "kv_cache holds ",
                 kv_cache->batch_size(), " rows, the input ", B);
    MARLIN_CHECK(kv_cache->config().max_seq_len >= needed, "generate", "prompt (", T,
                 " tokens) + max_new_tokens (", c.max_new_tokens, ") exceeds the kv_cache's ",
                 kv_cache->config().max_seq_len, " positions");
    kv_cache->reset();
  } else {
    // A cache of exactly the positions needed: no step can run past it.
    own_cache.emplace(model.make_cache(needed, B));
    kv_cache = &*own_cache;
  }

  std::vector<std::vector<int64_t>> generated(B), history = prompts;
  std::vector<bool> done(B, false);
  if (c.max_new_tokens == 0) return generated;
  Sampler sampler(model.config().vocab_size, c.seed);
  auto is_eos = [&](int64_t id) {
    for (const int64_t eos : c.eos_token_id)
      if (id == eos) return true;
    return false;
  };

  std::vector<int64_t> flat;
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  Tensor input = ids_tensor(flat, B);
  auto start = Clock::now();
  for (int64_t step = 0; step < c.max_new_tokens; ++step) {
    const Tensor logits = model.forward(input, kv_cache);
    const std::vector<int64_t> next = choose(sampler, logits.view({B, input.size(1), -1}), c,
                                             history, done);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      generated[b].push_back(next[b]);
      history[b].push_back(next[b]);
      if (streamer) streamer(next[b]);
      done[b] = is_eos(next[b]);
      all_done = all_done && done[b];
    }
    if (stats) {
      (step == 0 ? stats->prefill_ms : stats->decode_ms) += ms_since(start);
      start = Clock::now();
    }
    if (all_done) break;
    // Finished rows still take part in the step, since the cache advances every row together;
    // they are fed their last token (pad_token_id need not be in the vocabulary) and their
    // result is dropped.
    std::vector<int64_t> feed(B);
    for (int64_t b = 0; b < B; ++b) feed[b] = generated[b].back();
    input = ids_tensor(feed, B);
  }
  if (stats) {
    stats->prompt_tokens = T;
    for (const auto& g : generated) stats->generated_tokens += static_cast<int64_t>(g.size());
  }
  return generated;
}

std::vector<std::vector<int64_t>> rows_of(const Tensor& input_ids) {
  MARLIN_CHECK(input_ids.dtype() == DType::i32 || input_ids.dtype() == DType::i64, "generate",
               "input_ids must be i32 or i64, got ", input_ids.describe());
  MARLIN_CHECK(input_ids.dim() == 1 || input_ids.dim() == 2, "generate",
               "input_ids must be [T] or [B, T], got ", input_ids.describe());
  const Tensor ids = input_ids.to(Device::cpu()).to(DType::i64).contiguous();
  const int64_t B = ids.dim() == 2 ? ids.size(0) : 1, T = ids.size(-1);
  MARLIN_CHECK(B >= 1 && T >= 1, "generate", "input_ids must hold at least one token, got ",
               input_ids.describe());
  const int64_t* p = ids.data<int64_t>();
  std::vector<std::vector<int64_t>> rows(B);
  for (int64_t b = 0; b < B; ++b) rows[b].assign(p + b * T, p + (b + 1) * T);
  return rows;
}

}  // namespace

Tensor generate(const CausalLM& model, const Tensor& input_ids, const GenerationConfig& config,
                KVCache* kv_cache, const Streamer& streamer, GenerationStats* stats) {
  const std::vector<std::vector<int64_t>> prompts = rows_of(input_ids);
  const auto generated = run_batch(model, prompts, config, kv_cache, streamer, stats);
  const auto B = static_cast<int64_t>(prompts.size());
  const auto T = static_cast<int64_t>(prompts.front().size());
  size_t n = 0;
  for (const auto& g : generated) n = std::max(n, g.size());
  const int64_t width = T + static_cast<int64_t>(n);
  std::vector<int32_t> out(B * width, static_cast<int32_t>(config.pad_token_id));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(prompts[b].begin(), prompts[b].end(), out.begin() + b * width);
    std::copy(generated[b].begin(), generated[b].end(), out.begin() + b * width + T);
  }
  if (input_ids.dim() == 1) return Tensor::from_vector(out, {width}, DType::i32);
  return Tensor::from_vector(out, {B, width}, DType::i32);
}

std::vector<std::vector<int64_t>> generate(const CausalLM& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerationConfig& config,
                                           const Streamer& streamer, GenerationStats* stats) {
  MARLIN_CHECK(!prompts.empty(), "generate", "no prompts given");
  bool same_length = true;
  for (const auto& p : prompts) same_length = same_length && p.size() == prompts.front().size();
  if (same_length) return run_batch(model, prompts, config, nullptr, streamer, stats);
  std::vector<std::vector<int64_t>> out;
  GenerationStats total;
  for (const auto& p : prompts) {
    GenerationStats one;
    out.push_back(run_batch(model, {p}, config, nullptr, streamer, &one).front());
    total.prompt_tokens = std::max(total.prompt_tokens, one.prompt_tokens);
    total.generated_tokens += one.generated_tokens;
    total.prefill_ms += one.prefill_ms;
    total.decode_ms += one.decode_ms;
  }
  if (stats) *stats = total;
  return out;
}

}  // namespace marlin
