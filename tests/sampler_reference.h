// Sampler test helpers: the distribution the filters should leave, computed independently by
// sorting in float64, and Pearson's chi-square test of observed counts against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace marlin::testing {

// softmax(logits / temperature) after top-k (0: off) and top-p (1: off), in Transformers' order.
inline std::vector<double> filtered_distribution(const std::vector<float>& logits,
                                                 double temperature, int64_t top_k, double top_p) {
  const size_t V = logits.size();
  std::vector<size_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  size_t kept = top_k > 0 ? std::min(V, static_cast<size_t>(top_k)) : V;
  std::vector<double> p(V, 0.0);
  double z = 0;
  for (size_t r = 0; r < kept; ++r) z += std::exp((logits[order[r]] - logits[order[0]]) / temperature);
  double cumulative = 0;
  for (size_t r = 0; r < kept; ++r) {
    p[order[r]] = std::exp((logits[order[r]] - logits[order[0]]) / temperature) / z;
    cumulative += p[order[r]];
    if (cumulative >= top_p) {
      for (size_t s = r + 1; s < V; ++s) p[order[s]] = 0;
      kept = r + 1;
      break;
    }
  }
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= total;
  return p;
}

// Upper-tail p-value of Pearson's statistic (Wilson-Hilferty approximation of the chi-square
// distribution); 0 when a token of probability 0 was drawn.
inline double chi_square_p_value(const std::vector<int>& counts, const std::vector<double>& probs) {
  const double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  double x = 0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0) {
      if (counts[i] != 0) return 0.0;
      continue;
    }
    const double e = n * probs[i];
    x += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  const double k = cells - 1;
  if (k < 1) return 1.0;
  const double z = (std::cbrt(x / k) - (1 - 2 / (9 * k))) / std::sqrt(2 / (9 * k));
  return 0.5 * std::erfc(z / std::sqrt(2.0));
}

}  // namespace marlin::testing
