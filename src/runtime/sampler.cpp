// Sampler: parameter checks in the original API's terms, and the draw counter that makes each
// call use fresh noise from the seed's stream.
#include "marlin/sampler.h"

#include <cmath>
#include <random>

namespace marlin {

Sampler::Sampler(int64_t vocab_size, std::optional<uint64_t> seed)
    : vocab_size_(vocab_size), seed_(seed ? *seed : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()) {
  MARLIN_CHECK(vocab_size >= 1, "Sampler", "vocab_size must be >= 1, got ", vocab_size);
}

void Sampler::set_seed(uint64_t seed) {
  seed_ = seed;
  draws_ = 0;
}

void Sampler::check_logits(const char* op, const Tensor& logits) const {
  MARLIN_CHECK(logits.defined() && logits.numel() == vocab_size_, op, "logits must hold vocab_size=",
               vocab_size_, " values, got ", logits.defined() ? logits.describe() : "an undefined tensor");
}

int64_t Sampler::draw(const Tensor& logits, float temperature, int64_t top_k, float top_p) {
  constexpr const char* op = "Sampler";
  check_logits(op, logits);
  MARLIN_CHECK(temperature >= 0.0f && std::isfinite(temperature), op,
               "temperature must be finite and >= 0 (0 is greedy), got ", temperature);
  MARLIN_CHECK(top_k >= 0, op, "top_k must be >= 0 (0 is off), got ", top_k);
  MARLIN_CHECK(top_p > 0.0f && top_p <= 1.0f, op, "top_p must be in (0, 1] (1 is off), got ",
               top_p);
  SamplingParams p;
  p.inv_temperature = temperature == 0.0f ? 0.0f : 1.0f / temperature;
  MARLIN_CHECK(std::isfinite(p.inv_temperature), op, "temperature ", temperature,
               " is too small to divide by");
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed_;
  p.draw = draws_++;
  return ops::sample_token(logits, p);
}

int64_t Sampler::argmax(const Tensor& logits) {
  check_logits("Sampler::argmax", logits);
  return ops::sample_token(logits, SamplingParams{.inv_temperature = 0.0f});
}

int64_t Sampler::sample_categorical(const Tensor& logits, float temperature) {
  return draw(logits, temperature, 0, 1.0f);
}

int64_t Sampler::sample_top_k(const Tensor& logits, int64_t k, float temperature) {
  MARLIN_CHECK(k >= 1, "Sampler::sample_top_k", "k must be >= 1, got ", k);
  return draw(logits, temperature, k, 1.0f);
}

int64_t Sampler::sample_top_p(const Tensor& logits, float p, float temperature) {
  return draw(logits, temperature, 0, p);
}

Tensor Sampler::apply_repetition_penalty(const Tensor& logits,
                                         const std::vector<int64_t>& generated_ids, float penalty) {
  check_logits("Sampler::apply_repetition_penalty", logits);
  return ops::repetition_penalty(logits, generated_ids, penalty);
}

int64_t Sampler::sample(const Tensor& logits, float temperature, float top_p, int64_t top_k,
                        float repetition_penalty, const std::vector<int64_t>& generated_ids) {
  MARLIN_CHECK(repetition_penalty > 0.0f && std::isfinite(repetition_penalty), "Sampler",
               "repetition_penalty must be finite and > 0 (1 is off), got ", repetition_penalty);
  const Tensor penalized = repetition_penalty != 1.0f && !generated_ids.empty()
                               ? apply_repetition_penalty(logits, generated_ids, repetition_penalty)
                               : logits;
  return draw(penalized, temperature, top_k, top_p);
}

}  // namespace marlin
