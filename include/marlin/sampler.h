// Sampler (the original MetalSampler): next-token choice from a row of logits on the logits'
// device, with a seeded counter-based generator so that the same seed gives the same tokens.
// Filters apply in Transformers' order: repetition penalty, temperature, top-k, top-p.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "marlin/tensor.h"

namespace marlin {

// What one draw does. inv_temperature = 0 means greedy (argmax, filters ignored).
struct SamplingParams {
  float inv_temperature = 1.0f;
  int64_t top_k = 0;     // 0: off; keeps every token whose logit is >= the k-th largest
  float top_p = 1.0f;    // 1: off; keeps the fewest largest tokens whose probability sum is >= p
  uint64_t seed = 0;
  uint64_t draw = 0;     // index of this draw in the seed's stream
};

namespace ops {
// Token id chosen from logits ([V] or [1, V], f32/f16/bf16, contiguous): the argmax of
// logits * inv_temperature + Gumbel noise over the tokens the filters keep. On CUDA the
// choice is made on the device and one 4-byte copy brings it back.
int64_t sample_token(const Tensor& logits, const SamplingParams& params);
// Greedy choice of every row at once: logits [..., V] (f32/f16/bf16, contiguous) -> i32 [rows]
// on the logits' device, entry r the argmax of row r as sample_token makes it (ties to the
// smaller id, NaN never wins), or V when no logit of the row is a number. On CUDA one launch
// and no copy: a decode loop brings back only the chosen ids.
Tensor argmax_rows(const Tensor& logits);
// A copy of logits in which each id of generated_ids (duplicates count once) has its logit x
// replaced by x / penalty if x > 0, else x * penalty (Transformers' definition).
Tensor repetition_penalty(const Tensor& logits, const std::vector<int64_t>& generated_ids,
                          float penalty);
}  // namespace ops

class Sampler {
 public:
  // Without a seed, one is drawn from std::random_device.
  explicit Sampler(int64_t vocab_size, std::optional<uint64_t> seed = std::nullopt);

  int64_t argmax(const Tensor& logits);
  // Draws from softmax(logits / temperature) by the Gumbel-max trick; temperature 0 is argmax.
  int64_t sample_categorical(const Tensor& logits, float temperature = 1.0f);
  int64_t sample_top_k(const Tensor& logits, int64_t k, float temperature = 1.0f);
  int64_t sample_top_p(const Tensor& logits, float p, float temperature = 1.0f);
  Tensor apply_repetition_penalty(const Tensor& logits, const std::vector<int64_t>& generated_ids,
                                  float penalty);
  // All of the above in Transformers' order; temperature 0 is greedy after the penalty.
  int64_t sample(const Tensor& logits, float temperature = 1.0f, float top_p = 1.0f,
                 int64_t top_k = 0, float repetition_penalty = 1.0f,
                 const std::vector<int64_t>& generated_ids = {});

  int64_t vocab_size() const { return vocab_size_; }
  uint64_t seed() const { return seed_; }
  // Restarts the stream: the draws that follow repeat those after construction with this seed.
  void set_seed(uint64_t seed);

 private:
  int64_t draw(const Tensor& logits, float temperature, int64_t top_k, float top_p);
  void check_logits(const char* op, const Tensor& logits) const;

  int64_t vocab_size_;
  uint64_t seed_;
  uint64_t draws_ = 0;
};

}  // namespace marlin
