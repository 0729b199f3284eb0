// Shared helpers of the tests: seeded random tensors (never zeros), float64 references and
// error measures.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <random>
#include <vector>

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::testing {

// Values ~ N(0, stddev) in the given float dtype, on the CPU.
inline Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (auto& v : values) v = dist(rng);
  return Tensor::from_vector(values, shape, DType::f32).to(dtype);
}

inline std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> f = t.to_float_vector();
  return std::vector<double>(f.begin(), f.end());
}

// C = A @ W (+ bias) in float64 from the (exact) float values of A, W and bias.
inline std::vector<double> reference_gemm(const Tensor& A, const std::vector<double>& W, int64_t K,
                                          int64_t N, const Tensor& bias = {}) {
  const std::vector<double> a = to_double(A);
  const int64_t M = A.size(0);
  std::vector<double> c(static_cast<size_t>(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const double av = a[static_cast<size_t>(m * K + k)];
      const double* w = W.data() + k * N;
      double* out = c.data() + m * N;
      for (int64_t n = 0; n < N; ++n) out[n] += av * w[n];
    }
  if (bias.defined()) {
    const std::vector<double> b = to_double(bias);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[static_cast<size_t>(m * N + n)] += b[static_cast<size_t>(n)];
  }
  return c;
}

// ||got - ref|| / ||ref||; NaN anywhere (an unwritten, poisoned element) gives infinity.
inline double relative_error(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Float64 RMSNorm of the rows of n values of x with weight w (no rounding to a dtype).
inline std::vector<double> reference_rms_norm(const std::vector<double>& x, const std::vector<double>& w,
                                              int64_t n, double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / static_cast<size_t>(n); ++r) {
    double ss = 0;
    for (int64_t j = 0; j < n; ++j) ss += x[r * n + j] * x[r * n + j];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (int64_t j = 0; j < n; ++j) y[r * n + j] = w[j] * x[r * n + j] * inv;
  }
  return y;
}

// The message of the marlin::Error that fn throws, or "" when it throws none.
inline std::string error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Poisons every new allocation for the lifetime of a test.
class PoisonScope {
 public:
  PoisonScope() { set_poison_allocations(true); }
  ~PoisonScope() { set_poison_allocations(false); }
};

}  // namespace marlin::testing
