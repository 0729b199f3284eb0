// Float64 reference of attention, written as plainly as possible: softmax(scale * q k^T) v over
// the keys visible to each query, for queries at the end of caches [B, Hkv, S, D].
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace marlin::testing {

// q [B, T, Hq, D], k and v [B, Hkv, S, D]; query t of sequence b sits at lens[b] - T + t.
inline std::vector<double> reference_attention(const std::vector<double>& q,
                                               const std::vector<double>& k,
                                               const std::vector<double>& v,
                                               const std::vector<int>& lens, int64_t B, int64_t T,
                                               int64_t Hq, int64_t Hkv, int64_t S, int64_t D,
                                               double scale, int64_t window) {
  std::vector<double> out(q.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t pos = lens[static_cast<size_t>(b)] - T + t, kvh = h / (Hq / Hkv);
        const double* qr = &q[static_cast<size_t>(((b * T + t) * Hq + h) * D)];
        std::vector<double> scores;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j <= pos; ++j) {
          if (window > 0 && pos - j >= window) continue;
          const double* kr = &k[static_cast<size_t>(((b * Hkv + kvh) * S + j) * D)];
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += qr[d] * kr[d];
          scores.push_back(s * scale);
          keys.push_back(j);
        }
        const double m = *std::max_element(scores.begin(), scores.end());
        double z = 0;
        for (double& s : scores) z += (s = std::exp(s - m));
        double* o = &out[static_cast<size_t>(((b * T + t) * Hq + h) * D)];
        for (size_t i = 0; i < keys.size(); ++i) {
          const double* vr = &v[static_cast<size_t>(((b * Hkv + kvh) * S + keys[i]) * D)];
          for (int64_t d = 0; d < D; ++d) o[d] += scores[i] / z * vr[d];
        }
      }
  return out;
}

// [T, H, D] (prefill layout) -> [1, H, T, D] (cache layout).
inline std::vector<double> token_major_to_cache(const std::vector<double>& x, int64_t T,
                                                int64_t H, int64_t D) {
  std::vector<double> out(x.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d)
        out[static_cast<size_t>((h * T + t) * D + d)] = x[static_cast<size_t>((t * H + h) * D + d)];
  return out;
}

}  // namespace marlin::testing
