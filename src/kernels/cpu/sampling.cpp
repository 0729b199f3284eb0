// CPU sampler: filters by thresholds on the order-preserving key of each logit (the same rule
// as the CUDA radix select), then the Gumbel-max draw over the tokens kept.
#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_set>

#include "kernels/cpu/sampling_kernels.h"
#include "kernels/sampling_common.h"

namespace marlin::cpu {
namespace {

std::vector<float> load(const Tensor& t) {
  std::vector<float> y(static_cast<size_t>(t.numel()));
  const void* p = t.data_ptr();
  for (size_t i = 0; i < y.size(); ++i) {
    if (t.dtype() == DType::f32) y[i] = static_cast<const float*>(p)[i];
    else if (t.dtype() == DType::f16) y[i] = half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    else y[i] = bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  return y;
}

// Smallest key a token needs to survive top-k and then top-p (0 keeps everything).
uint32_t keep_threshold(const std::vector<float>& y, const SamplingParams& p) {
  const int64_t V = static_cast<int64_t>(y.size());
  std::vector<uint32_t> keys(y.size());
  for (size_t i = 0; i < y.size(); ++i) keys[i] = sampling::order_key(y[i]);
  uint32_t threshold = 0;
  if (p.top_k > 0 && p.top_k < V) {
    std::vector<uint32_t> sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(),
                     std::greater<uint32_t>());
    threshold = sorted[static_cast<size_t>(p.top_k - 1)];
  }
  if (p.top_p < 1.0f) {
    std::vector<std::pair<uint32_t, float>> kept;
    for (size_t i = 0; i < y.size(); ++i)
      if (keys[i] >= threshold) kept.emplace_back(keys[i], y[i] * p.inv_temperature);
    std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    const double m = kept.front().second;
    double z = 0;
    for (const auto& [key, v] : kept) z += std::exp(static_cast<double>(v) - m);
    // The first token (largest first) at which the running probability reaches top_p is the
    // last one kept; tokens tied with it stay too.
    double cumulative = 0;
    for (const auto& [key, v] : kept) {
      cumulative += std::exp(static_cast<double>(v) - m) / z;
      if (cumulative >= p.top_p) {
        threshold = std::max(threshold, key);
        break;
      }
    }
  }
  return threshold;
}

}  // namespace

int64_t sample_token(const Tensor& logits, const SamplingParams& p) {
  const std::vector<float> y = load(logits);
  const int64_t V = static_cast<int64_t>(y.size());
  int64_t best_id = V;
  float best = -INFINITY;
  if (p.inv_temperature == 0.0f) {
    for (int64_t i = 0; i < V; ++i)
      if (y[static_cast<size_t>(i)] > best || (best_id == V && !std::isnan(y[static_cast<size_t>(i)]))) {
        best = y[static_cast<size_t>(i)];
        best_id = i;
      }
    return best_id;
  }
  const uint32_t threshold = keep_threshold(y, p);
  for (int64_t i = 0; i < V; ++i) {
    const float v = y[static_cast<size_t>(i)];
    if (std::isnan(v) || sampling::order_key(v) < threshold) continue;
    const float score = v * p.inv_temperature + sampling::gumbel(p.seed, p.draw, V, i);
    if (score > best || best_id == V) {
      best = score;
      best_id = i;
    }
  }
  return best_id;
}

void repetition_penalty(const Tensor& logits, const std::vector<int64_t>& ids, float penalty,
                        Tensor& out) {
  out.copy_from(logits);
  const std::vector<float> y = load(logits);
  for (int64_t id : std::unordered_set<int64_t>(ids.begin(), ids.end())) {
    const float x = y[static_cast<size_t>(id)];
    const float v = x > 0 ? x / penalty : x * penalty;
    void* o = out.data_ptr();
    if (out.dtype() == DType::f32) static_cast<float*>(o)[id] = v;
    else if (out.dtype() == DType::f16) static_cast<uint16_t*>(o)[id] = float_to_half_bits(v);
    else static_cast<uint16_t*>(o)[id] = float_to_bf16_bits(v);
  }
}

}  // namespace marlin::cpu
