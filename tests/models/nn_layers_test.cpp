// QuantizedLinear against float64 references: the 16-bit layer computes x @ W^T + b, and a
// quantized layer equals the 16-bit layer built from its own dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "marlin/nn.h"
#include "test_util.h"

namespace marlin {
namespace {

double relative_error(const std::vector<float>& x, const std::vector<double>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num / den);
}

// y[m][n] = sum_k x[m][k] * w[n][k] + b[n] in float64, w as HF stores it: [out, in].
std::vector<double> reference_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const std::vector<double> xs = testing::to_double(x), ws = testing::to_double(w),
                            bs = testing::to_double(b);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<double> y(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bs[static_cast<size_t>(n)];
      for (int64_t k = 0; k < K; ++k) acc += xs[static_cast<size_t>(m * K + k)] * ws[static_cast<size_t>(n * K + k)];
      y[static_cast<size_t>(m * N + n)] = acc;
    }
  return y;
}

TEST(QuantizedLinear, SixteenBitMatchesFloat64Reference) {
  const Tensor w = testing::random_tensor({96, 64}, DType::bf16, 1, 0.2f);
  const Tensor b = testing::random_tensor({96}, DType::f32, 2);
  const Tensor x = testing::random_tensor({5, 64}, DType::f32, 3);
  const QuantizedLinear layer(w, b, 16, 128, {});
  const Tensor y = layer.forward(x);
  ASSERT_EQ(y.shape(), (Shape{5, 96}));
  EXPECT_LT(relative_error(y.to_float_vector(), reference_linear(x, w, b)), 1e-6);
  // Leading dims pass through.
  EXPECT_EQ(layer.forward(x.view({1, 5, 64})).shape(), (Shape{1, 5, 96}));
}

TEST(QuantizedLinear, QuantizedEqualsFloatRunOfDequantizedWeights) {
  const Tensor w = testing::random_tensor({64, 128}, DType::f32, 4, 0.1f);
  const Tensor b = testing::random_tensor({64}, DType::f32, 5);
  const Tensor x = testing::random_tensor({7, 128}, DType::f32, 6);
  for (int bits : {8, 4, 2}) {
    const QuantizedLinear q(w, b, bits, 32, {});
    EXPECT_EQ(q.qweight().group_size, 32);
    // dequantized [K, N] back to HF's [out, in].
    const Tensor w_hat = dequantize_cpu(q.qweight(), DType::f32).transpose(0, 1).contiguous();
    const double err = relative_error(q.forward(x).to_float_vector(), reference_linear(x, w_hat, b));
    EXPECT_LT(err, 1e-5) << "bits " << bits;
  }
}

TEST(QuantizedLinear, ErrorsNameTheProblem) {
  const Tensor w = testing::random_tensor({32, 64}, DType::f32, 7);
  auto message = [](auto fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message([&] { QuantizedLinear(w, {}, 3, 32, {}); }).find("bits"), std::string::npos);
  EXPECT_NE(message([&] { QuantizedLinear(w, testing::random_tensor({5}, DType::f32, 8), 16, 32, {}); })
                .find("bias"),
            std::string::npos);
  const QuantizedLinear layer(w, {}, 16, 32, {});
  EXPECT_NE(message([&] { layer.forward(testing::random_tensor({2, 63}, DType::f32, 9)); }).find("63"),
            std::string::npos);
  EXPECT_NE(message([&] { layer.forward(testing::random_tensor({2, 64}, DType::bf16, 9)); }).find("bf16"),
            std::string::npos);
  // f32 activations need the CPU backend.
  LayerPlacement gpu{Device::cuda(0), DType::f32};
  EXPECT_NE(message([&] { QuantizedLinear(w, {}, 16, 32, gpu); }).find("f32"), std::string::npos);
}

}  // namespace
}  // namespace marlin
