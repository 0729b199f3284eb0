// generate: prefill, then one forward pass per token through the KV cache, choosing each token
// with the Sampler. Only CausalLM's abstract interface is used, so this layer needs no model code.
#include "marlin/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "core/env.h"
#include "marlin/decode_graph.h"
#include "marlin/error.h"
#include "marlin/sampler.h"
#include "marlin/stream.h"

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

// Token ids chosen from logits [B, T, V] at position last[b] of each row still generating.
std::vector<int64_t> choose(Sampler& sampler, const Tensor& logits, const GenerationConfig& c,
                            const std::vector<int64_t>& last,
                            const std::vector<std::vector<int64_t>>& history,
                            const std::vector<bool>& done) {
  const bool greedy = !c.do_sample || c.temperature == 0.0f;
  std::vector<int64_t> ids(history.size(), c.pad_token_id);
  static const std::vector<int64_t> kNoHistory;
  for (size_t b = 0; b < history.size(); ++b) {
    if (done[b]) continue;
    const Tensor row = logits.select(0, static_cast<int64_t>(b)).select(0, last[b]);
    // The penalty looks at the prompt and every generated token, as Transformers' does.
    const bool penalize = c.repetition_penalty != 1.0f;
    ids[b] = sampler.sample(row, greedy ? 0.0f : c.temperature, greedy ? 1.0f : c.top_p,
                            greedy ? 0 : c.top_k, c.repetition_penalty,
                            penalize ? history[b] : kNoHistory);
  }
  return ids;
}

bool is_greedy(const GenerationConfig& c) { return !c.do_sample || c.temperature == 0.0f; }

// Greedy ids of a decode step's logits [B, 1, V] chosen on the device: one launch for every
// row and one copy of B ids back (what Sampler::sample gives greedy rows without a penalty).
std::vector<int64_t> choose_greedy_on_device(const Tensor& logits, const GenerationConfig& c,
                                             const std::vector<bool>& done) {
  const int64_t B = logits.size(0), V = logits.size(-1);
  const Tensor chosen = ops::argmax_rows(logits.view({B, V})).to(Device::cpu());
  const int32_t* p = chosen.data<int32_t>();
  std::vector<int64_t> ids(static_cast<size_t>(B), c.pad_token_id);
  for (int64_t b = 0; b < B; ++b) {
    if (done[static_cast<size_t>(b)]) continue;
    MARLIN_CHECK(p[b] >= 0 && p[b] < V, "sample_token", "no logit of row ", b, " of ",
                 logits.describe(), " is a number");
    ids[static_cast<size_t>(b)] = p[b];
  }
  return ids;
}

// GenerationConfig::cuda_graph, unless MARLIN_CUDA_GRAPH=1 or 0 decides for the process.
bool graphs_wanted(const GenerationConfig& c) {
  if (env_is("MARLIN_CUDA_GRAPH", "1")) return true;
  if (env_is("MARLIN_CUDA_GRAPH", "0")) return false;
  return c.cuda_graph;
}

Tensor ids_tensor(const std::vector<int64_t>& values, int64_t rows) {
  std::vector<int32_t> narrow(values.begin(), values.end());
  return Tensor::from_vector(narrow, {rows, static_cast<int64_t>(values.size()) / rows},
                             DType::i32);
}

// prompts: B rows of any lengths (>= 1), run as one batch. Returns each row's generated tokens
// (an eos included).
std::vector<std::vector<int64_t>> run_batch(const CausalLM& model,
                                            const std::vector<std::vector<int64_t>>& prompts,
                                            const GenerationConfig& c, KVCache* kv_cache,
                                            const RowStreamer& streamer, GenerationStats* stats) {
  check_config(c);
  const auto B = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> lengths(B);
  for (int64_t b = 0; b < B; ++b) {
    lengths[b] = static_cast<int64_t>(prompts[b].size());
    MARLIN_CHECK(lengths[b] >= 1, "generate", "prompt ", b, " holds no token");
  }
  const int64_t T = *std::max_element(lengths.begin(), lengths.end());
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

  // Shorter prompts are right-padded with their own last token (a valid id: pad_token_id need
  // not be in the vocabulary); the cache never stores the padding and no row attends to it.
  std::vector<int64_t> flat;
  for (const auto& p : prompts) {
    flat.insert(flat.end(), p.begin(), p.end());
    flat.insert(flat.end(), static_cast<size_t>(T) - p.size(), p.back());
  }
  Tensor input = ids_tensor(flat, B);
  // On CUDA the decode steps replay one captured graph. The whole run (prefill included) goes
  // on the graph's stream, so nothing needs ordering across streams; greedy rows without a
  // penalty are chosen on the device.
  std::optional<DecodeGraph> graph;
  if (c.max_new_tokens >= 2 && graphs_wanted(c) && DecodeGraph::supported(model))
    graph.emplace(model, *kv_cache);
  StreamGuard on_graph_stream(graph ? graph->stream() : current_stream(model.device().index),
                              graph.has_value());
  const bool greedy_on_device = graph && is_greedy(c) && c.repetition_penalty == 1.0f;
  kv_cache->begin_step(T, lengths);
  std::vector<int64_t> last(B);
  for (int64_t b = 0; b < B; ++b) last[b] = lengths[b] - 1;
  std::vector<int64_t> feed(B);
  auto start = Clock::now();
  for (int64_t step = 0; step < c.max_new_tokens; ++step) {
    const bool replayed = step > 0 && graph;
    const double capture_before = graph ? graph->capture_ms() : 0.0;
    const Tensor logits = replayed ? graph->step(feed) : model.forward(input, kv_cache);
    const std::vector<int64_t> next =
        replayed && greedy_on_device
            ? choose_greedy_on_device(logits, c, done)
            : choose(sampler, logits.view({B, replayed ? 1 : input.size(1), -1}), c, last, history, done);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      generated[b].push_back(next[b]);
      history[b].push_back(next[b]);
      if (streamer) streamer(b, next[b]);
      done[b] = is_eos(next[b]);
      all_done = all_done && done[b];
    }
    if (stats) {
      // The graph's one-time capture is reported apart from the steps' time.
      const double captured = graph ? graph->capture_ms() - capture_before : 0.0;
      (step == 0 ? stats->prefill_ms : stats->decode_ms) += ms_since(start) - captured;
      stats->capture_ms += captured;
      start = Clock::now();
    }
    if (all_done) break;
    // Finished rows still take part in the step (one launch shape for the whole decode); they
    // are fed their last token and their result is dropped.
    for (int64_t b = 0; b < B; ++b) feed[b] = generated[b].back();
    if (!graph) input = ids_tensor(feed, B);
    std::fill(last.begin(), last.end(), 0);
  }
  if (stats) {
    stats->cuda_graph = graph && graph->captured();
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

// The rows as given, each followed by its generated tokens, filled up with pad_token_id.
Tensor output_tensor(const std::vector<std::vector<int64_t>>& rows,
                     const std::vector<std::vector<int64_t>>& generated, int64_t pad, bool one_d) {
  const auto B = static_cast<int64_t>(rows.size());
  const auto T = static_cast<int64_t>(rows.front().size());
  size_t n = 0;
  for (const auto& g : generated) n = std::max(n, g.size());
  const int64_t width = T + static_cast<int64_t>(n);
  std::vector<int32_t> out(B * width, static_cast<int32_t>(pad));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(rows[b].begin(), rows[b].end(), out.begin() + b * width);
    std::copy(generated[b].begin(), generated[b].end(), out.begin() + b * width + T);
  }
  if (one_d) return Tensor::from_vector(out, {width}, DType::i32);
  return Tensor::from_vector(out, {B, width}, DType::i32);
}

RowStreamer by_row(const Streamer& streamer) {
  if (!streamer) return nullptr;
  return [&streamer](int64_t, int64_t id) { streamer(id); };
}

}  // namespace

Tensor generate(const CausalLM& model, const Tensor& input_ids, const GenerationConfig& config,
                KVCache* kv_cache, const Streamer& streamer, GenerationStats* stats) {
  const std::vector<std::vector<int64_t>> rows = rows_of(input_ids);
  const auto generated = run_batch(model, rows, config, kv_cache, by_row(streamer), stats);
  return output_tensor(rows, generated, config.pad_token_id, input_ids.dim() == 1);
}

Tensor generate(const CausalLM& model, const Tensor& input_ids, const Tensor& attention_mask,
                const GenerationConfig& config, KVCache* kv_cache, const Streamer& streamer,
                GenerationStats* stats) {
  constexpr const char* op = "generate";
  const std::vector<std::vector<int64_t>> rows = rows_of(input_ids);
  MARLIN_CHECK(attention_mask.defined() && attention_mask.shape() == input_ids.shape(), op,
               "attention_mask must have input_ids' shape ", shape_str(input_ids.shape()),
               ", got ", attention_mask.defined() ? attention_mask.describe() : "an undefined tensor");
  const std::vector<float> mask = attention_mask.to_float_vector();
  const auto T = static_cast<int64_t>(rows.front().size());
  std::vector<std::vector<int64_t>> prompts;
  for (size_t b = 0; b < rows.size(); ++b) {
    const float* m = mask.data() + b * T;
    int64_t first = T, last = -1;
    for (int64_t t = 0; t < T; ++t) {
      MARLIN_CHECK(m[t] == 0.0f || m[t] == 1.0f, op, "attention_mask[", b, ", ", t, "]=", m[t],
                   " must be 0 or 1");
      if (m[t] == 1.0f) {
        first = std::min(first, t);
        last = t;
      }
    }
    MARLIN_CHECK(last >= 0, op, "row ", b, " of attention_mask has no token");
    for (int64_t t = first; t <= last; ++t)
      MARLIN_CHECK(m[t] == 1.0f, op, "row ", b, " of attention_mask has padding at ", t,
                   " inside the prompt [", first, ", ", last, "]: pad on the left or the right");
    prompts.emplace_back(rows[b].begin() + first, rows[b].begin() + last + 1);
  }
  const auto generated = run_batch(model, prompts, config, kv_cache, by_row(streamer), stats);
  return output_tensor(rows, generated, config.pad_token_id, input_ids.dim() == 1);
}

std::vector<std::vector<int64_t>> generate(const CausalLM& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerationConfig& config,
                                           const RowStreamer& streamer, GenerationStats* stats) {
  MARLIN_CHECK(!prompts.empty(), "generate", "no prompts given");
  return run_batch(model, prompts, config, nullptr, streamer, stats);
}

}  // namespace marlin
