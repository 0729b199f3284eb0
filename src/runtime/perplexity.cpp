// Transformers' strided perplexity (see marlin/perplexity.h), window by window through
// CausalLM::forward, with log-softmax and the NLL sum on the CPU in double.
#include "marlin/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "marlin/error.h"

namespace marlin {
namespace {

// Sum over rows [first, rows) of -log softmax(logits[r])[targets[r]], for logits f32 [rows, V].
double window_nll(const std::vector<float>& logits, int64_t V, const int32_t* targets,
                  int64_t first, int64_t rows) {
  double nll = 0;
  for (int64_t r = first; r < rows; ++r) {
    const float* row = logits.data() + r * V;
    const float mx = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
    nll += std::log(sum) + mx - static_cast<double>(row[targets[r]]);
  }
  return nll;
}

}  // namespace

PerplexityResult strided_perplexity(const CausalLM& model, const std::vector<int32_t>& ids,
                                    int64_t context, int64_t stride) {
  constexpr const char* op = "perplexity";
  const int64_t length = static_cast<int64_t>(ids.size());
  const int64_t V = model.config().vocab_size;
  const int64_t max_context = model.config().max_position_embeddings;
  MARLIN_CHECK(context >= 2, op, "context must be at least 2 tokens, got ", context);
  MARLIN_CHECK(max_context <= 0 || context <= max_context, op, "context ", context,
               " exceeds the model's max_position_embeddings ", max_context);
  MARLIN_CHECK(stride >= 1 && stride <= context, op, "stride must be in [1, context = ", context,
               "], got ", stride);
  MARLIN_CHECK(length >= 2, op, "the text must be at least 2 tokens, got ", length);
  for (const int32_t id : ids)
    MARLIN_CHECK(id >= 0 && id < V, op, "token id ", id, " is outside the vocabulary [0, ", V, ")");

  PerplexityResult result;
  const auto started = std::chrono::steady_clock::now();
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < length; begin += stride) {
    const int64_t end = std::min(begin + context, length);
    const int64_t T = end - begin;
    // Tokens of this window that no earlier window scored: the last `fresh` of its T - 1
    // targets (all of them for the first window, whose own first token has no context).
    const int64_t fresh = std::min(end - prev_end, T - 1);
    const std::vector<int32_t> window(ids.begin() + begin, ids.begin() + end);
    const Tensor logits = model.forward(Tensor::from_vector(window, {T}, DType::i32));
    MARLIN_CHECK(logits.dim() == 2 && logits.size(0) == T && logits.size(1) == V, op,
                 "the model returned logits ", logits.describe(), " for ", T, " tokens, vocab ", V);
    // Row r predicts window[r + 1]; rows [T - 1 - fresh, T - 1) are the fresh ones.
    result.nll_sum += window_nll(logits.to_float_vector(), V, window.data() + 1, T - 1 - fresh, T - 1);
    result.tokens_scored += fresh;
    ++result.windows;
    prev_end = end;
    if (end == length) break;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.perplexity = std::exp(result.nll_sum / static_cast<double>(result.tokens_scored));
  return result;
}

}  // namespace marlin
