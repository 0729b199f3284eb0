// Perplexity of a causal LM on a token sequence, by Transformers' strided method (the Hugging
// Face docs' "Perplexity of fixed-length models"), so that figures compare with
// tools/perplexity_reference.py and with published Transformers numbers.
#pragma once

#include <cstdint>
#include <vector>

#include "marlin/model.h"

namespace marlin {

struct PerplexityResult {
  double perplexity = 0;  // exp(nll_sum / tokens_scored)
  double nll_sum = 0;     // summed negative log-likelihood in nats
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;  // forward passes and scoring, not tokenization or loading
};

// ids: the whole text tokenized once (with the tokenizer's special tokens, e.g. one bos at the
// start). Windows of `context` tokens start every `stride` tokens (stride <= context) and the
// last one ends at the last token; each window scores only the tokens no earlier window scored,
// and never its own first token (it has no left context). stride == context: non-overlapping
// windows, each scoring all its tokens but the first. Each window is a fresh sequence at
// positions 0.., as in Transformers.
PerplexityResult strided_perplexity(const CausalLM& model, const std::vector<int32_t>& ids,
                                    int64_t context, int64_t stride);

}  // namespace marlin
