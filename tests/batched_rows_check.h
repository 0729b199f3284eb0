// Shared by the CPU (tests/models) and CUDA (tests/cuda) tests: prompts of different lengths
// run as one right-padded batch through one KV cache give each row the logits and greedy tokens
// of running it alone, in the prefill and in every decode step after it.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "marlin/model.h"

namespace marlin::testing {

// ||a - b|| / ||b|| of two [n] float rows.
inline double row_relative_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

inline int64_t argmax_of(const float* row, int64_t n) {
  return std::max_element(row, row + n) - row;
}

// Rows of `lengths` tokens cut from `base` (each from another offset, so no two rows are alike),
// prefilled together as one padded [B, max] batch and decoded `steps` tokens. Every row is fed
// the greedy tokens of its single run (teacher forcing), so both runs see the same inputs and
// each logits row is compared: within `tolerance` relative error, and the same greedy token
// unless the single run's own top-2 margin is under tolerance times the row's RMS (16-bit runs).
inline void expect_batch_matches_single_runs(const CausalLM& model, const std::vector<int32_t>& base,
                                             const std::vector<int64_t>& lengths, int64_t steps,
                                             double tolerance, const std::string& what) {
  const int64_t B = static_cast<int64_t>(lengths.size());
  const int64_t T = *std::max_element(lengths.begin(), lengths.end());
  const int64_t V = model.config().vocab_size;
  std::vector<std::vector<int32_t>> rows(B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < lengths[b]; ++t)
      rows[b].push_back(base[static_cast<size_t>((3 * b + t) % static_cast<int64_t>(base.size()))]);

  // Single runs: prefill logits [L, V] and each decode step's [V], with their greedy tokens.
  std::vector<std::vector<float>> prefill(B), decode(B);
  std::vector<std::vector<int32_t>> tokens(B);
  for (int64_t b = 0; b < B; ++b) {
    KVCache cache = model.make_cache(lengths[b] + steps);
    const Tensor ids = Tensor::from_vector(rows[b], {lengths[b]}, DType::i32);
    prefill[b] = model.forward(ids, &cache).to_float_vector();
    const float* last = prefill[b].data() + (lengths[b] - 1) * V;
    tokens[b].push_back(static_cast<int32_t>(argmax_of(last, V)));
    for (int64_t s = 0; s < steps; ++s) {
      const Tensor one = Tensor::from_vector(std::vector<int32_t>{tokens[b].back()}, {1}, DType::i32);
      const std::vector<float> logits = model.forward(one, &cache).to_float_vector();
      decode[b].insert(decode[b].end(), logits.begin(), logits.end());
      tokens[b].push_back(static_cast<int32_t>(argmax_of(logits.data(), V)));
    }
  }

  auto compare = [&](const float* got, const float* want, int64_t b, const std::string& where) {
    const double err = row_relative_error(got, want, V);
    EXPECT_LT(err, tolerance) << what << " row " << b << " " << where;
    const int64_t ours = argmax_of(got, V), theirs = argmax_of(want, V);
    if (ours != theirs) {
      double rms = 0;
      for (int64_t v = 0; v < V; ++v) rms += double(want[v]) * want[v];
      rms = std::sqrt(rms / V);
      EXPECT_LT(want[theirs] - want[ours], tolerance * rms)
          << what << " row " << b << " " << where << ": token " << ours << " where the single run "
          << "clearly prefers " << theirs;
    }
  };

  // The batch: right-padded with tokens of their own (the padding must not matter).
  std::vector<int32_t> flat;
  for (int64_t b = 0; b < B; ++b) {
    flat.insert(flat.end(), rows[b].begin(), rows[b].end());
    for (int64_t t = lengths[b]; t < T; ++t) flat.push_back(static_cast<int32_t>((7 * t + b) % V));
  }
  KVCache cache = model.make_cache(T + steps, B);
  cache.begin_step(T, lengths);
  const std::vector<float> batch_prefill =
      model.forward(Tensor::from_vector(flat, {B, T}, DType::i32), &cache).to_float_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < lengths[b]; ++t)
      compare(batch_prefill.data() + (b * T + t) * V, prefill[b].data() + t * V, b,
              "prefill position " + std::to_string(t));
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int32_t> next(B);
    for (int64_t b = 0; b < B; ++b) next[b] = tokens[b][s];
    const std::vector<float> logits =
        model.forward(Tensor::from_vector(next, {B, 1}, DType::i32), &cache).to_float_vector();
    for (int64_t b = 0; b < B; ++b)
      compare(logits.data() + b * V, decode[b].data() + s * V, b, "decode step " + std::to_string(s));
  }
  for (int64_t b = 0; b < B; ++b) EXPECT_EQ(cache.seq_len(b), lengths[b] + steps) << what;
}

}  // namespace marlin::testing
