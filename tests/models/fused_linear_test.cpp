// Fused projections at the layer level: QuantizedLinear::concat / columns round-trip the weights
// bit for bit, FusedLinear's outputs equal each part's own layer (bit for bit on the CPU, where
// every output column is summed the same way whatever N is), and parts that cannot share a GEMM
// stay apart.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "marlin/nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::error_message;
using testing::random_tensor;

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

bool same_weights(const QuantizedLinear& a, const QuantizedLinear& b) {
  if (a.bits() != b.bits() || a.in_features() != b.in_features() || a.out_features() != b.out_features())
    return false;
  const bool weights = a.bits() == 16 ? same_bytes(a.weight(), b.weight())
                                      : same_bytes(a.qweight().packed, b.qweight().packed) &&
                                            same_bytes(a.qweight().scales, b.qweight().scales);
  return weights && same_bytes(a.bias(), b.bias());
}

// Three projections of one input with output sizes that are multiples of no tile.
std::vector<QuantizedLinear> make_parts(int bits, int64_t K, bool bias, const LayerPlacement& where,
                                        uint64_t seed, const std::vector<int64_t>& outs = {37, 5, 22}) {
  std::vector<QuantizedLinear> parts;
  for (const int64_t n : outs) {
    const Tensor w = random_tensor({n, K}, DType::f32, ++seed, 0.1f);
    const Tensor b = bias ? random_tensor({n}, DType::f32, ++seed) : Tensor();
    parts.emplace_back(w, b, bits, 32, where);
  }
  return parts;
}

TEST(FusedLinear, ConcatThenColumnsGivesThePartsBack) {
  for (const int bits : {16, 8, 4, 2})
    for (const bool bias : {false, true}) {
      const std::vector<QuantizedLinear> parts = make_parts(bits, 96, bias, {}, 10 * bits);
      const QuantizedLinear whole = QuantizedLinear::concat(parts);
      EXPECT_EQ(whole.out_features(), 37 + 5 + 22);
      EXPECT_EQ(whole.bits(), bits);
      EXPECT_TRUE(same_weights(whole.columns(0, 37), parts[0])) << bits;
      EXPECT_TRUE(same_weights(whole.columns(37, 5), parts[1])) << bits;
      EXPECT_TRUE(same_weights(whole.columns(42, 22), parts[2])) << bits;
      // A quantized layer's concatenation quantizes like the concatenated float weight (the
      // scales are per output column).
      if (bits != 16) {
        const Tensor w = random_tensor({20, 64}, DType::f32, 77, 0.1f);
        const QuantizedLinear full(w, {}, bits, 32, {});
        const QuantizedLinear glued = QuantizedLinear::concat(
            {QuantizedLinear(w.narrow(0, 0, 13), {}, bits, 32, {}),
             QuantizedLinear(w.narrow(0, 13, 7), {}, bits, 32, {})});
        EXPECT_TRUE(same_weights(glued, full)) << bits;
      }
    }
}

// Where every part's N is a multiple of 8, each part and the whole take the same CPU kernel
// (the decode kernel wants N % 8 == 0), which sums every output column the same way whatever
// N is: bit for bit.
TEST(FusedLinear, OutputsEqualEachPartsOwnLayer) {
  testing::PoisonScope poison;
  for (const DType dt : {DType::f32, DType::bf16})
    for (const int bits : {16, 8, 4, 2}) {
      const LayerPlacement where{Device::cpu(), dt};
      const std::vector<QuantizedLinear> parts = make_parts(bits, 128, bits == 4, where, bits, {40, 8, 24});
      const FusedLinear fused(parts);
      ASSERT_TRUE(fused.fused());
      ASSERT_EQ(fused.size(), 3u);
      // M = 1..4 takes the decode kernel, 5 and 70 the tiled one; rows of a [B, T] batch too.
      for (const Shape& xs : {Shape{1, 128}, Shape{3, 128}, Shape{5, 128}, Shape{70, 128}, Shape{2, 3, 128}}) {
        const Tensor x = random_tensor(xs, dt, 99);
        const std::vector<Tensor> outs = fused.forward(x);
        ASSERT_EQ(outs.size(), 3u);
        for (size_t i = 0; i < 3; ++i) {
          const Tensor want = parts[i].forward(x);
          ASSERT_EQ(outs[i].shape(), want.shape());
          EXPECT_EQ(outs[i].to_float_vector(), want.to_float_vector())
              << dtype_name(dt) << " bits " << bits << " part " << i << " x " << shape_str(xs);
        }
      }
      // Parts handed back out are the layers that went in.
      for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_weights(fused.part(i), parts[i]));
    }
}

// Parts of odd sizes may take another kernel than their concatenation at decode sizes: the
// same sums in another order, so within f32 reassociation of the float64 reference.
TEST(FusedLinear, OddSizedPartsMatchTheFloat64Reference) {
  testing::PoisonScope poison;
  for (const int bits : {16, 8, 4, 2}) {
    const std::vector<QuantizedLinear> parts = make_parts(bits, 128, true, {}, 40 + bits);
    const FusedLinear fused(parts);
    ASSERT_TRUE(fused.fused());
    for (const Shape& xs : {Shape{1, 128}, Shape{4, 128}, Shape{9, 128}}) {
      const Tensor x = random_tensor(xs, DType::f32, 7);
      const std::vector<Tensor> outs = fused.forward(x);
      for (size_t i = 0; i < 3; ++i) {
        const QuantizedLinear& p = parts[i];
        const Tensor w = p.bits() == 16 ? p.weight() : dequantize_cpu(p.qweight(), DType::f32);  // [K, N]
        const std::vector<double> ref =
            testing::reference_gemm(x, testing::to_double(w), p.in_features(), p.out_features(), p.bias());
        EXPECT_LT(testing::relative_error(testing::to_double(outs[i]), ref), 2e-6)
            << "bits " << bits << " part " << i << " x " << shape_str(xs);
        EXPECT_LT(testing::relative_error(testing::to_double(outs[i]), testing::to_double(p.forward(x))), 2e-6);
      }
    }
  }
}

TEST(FusedLinear, PartsThatCannotShareAGemmStayApart) {
  const LayerPlacement cpu{};
  std::vector<QuantizedLinear> mixed = make_parts(4, 64, false, cpu, 1);
  mixed[1] = QuantizedLinear(random_tensor({5, 64}, DType::f32, 50, 0.1f), {}, 16, 32, cpu);
  EXPECT_FALSE(QuantizedLinear::can_concat(mixed));
  const std::string msg = error_message([&] { QuantizedLinear::concat(mixed); });
  EXPECT_NE(msg.find("[QuantizedLinear::concat]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 bits"), std::string::npos) << msg;
  const FusedLinear apart(mixed);
  EXPECT_FALSE(apart.fused());
  const Tensor x = random_tensor({4, 64}, DType::f32, 51);
  const std::vector<Tensor> outs = apart.forward(x);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(outs[i].to_float_vector(), mixed[i].forward(x).to_float_vector());

  // Other group sizes, bias on some parts only, other activation dtypes: no concatenation.
  std::vector<QuantizedLinear> groups = make_parts(8, 128, false, cpu, 2);
  groups[2] = QuantizedLinear(random_tensor({22, 128}, DType::f32, 60, 0.1f), {}, 8, 64, cpu);
  EXPECT_NE(error_message([&] { QuantizedLinear::concat(groups); }).find("group size 64"), std::string::npos);
  std::vector<QuantizedLinear> bias = make_parts(16, 64, false, cpu, 3);
  bias[0] = QuantizedLinear(random_tensor({37, 64}, DType::f32, 61), random_tensor({37}, DType::f32, 62), 16,
                            32, cpu);
  EXPECT_NE(error_message([&] { QuantizedLinear::concat(bias); }).find("bias"), std::string::npos);
  std::vector<QuantizedLinear> dtypes = make_parts(16, 64, false, cpu, 4);
  dtypes[1] = QuantizedLinear(random_tensor({5, 64}, DType::f32, 63), {}, 16, 32, {Device::cpu(), DType::bf16});
  EXPECT_FALSE(QuantizedLinear::can_concat(dtypes));
  // Fusing not asked for: separate GEMMs even where they could share one.
  EXPECT_FALSE(FusedLinear(make_parts(4, 64, false, cpu, 5), /*fuse=*/false).fused());
  // One part needs no fusing.
  EXPECT_FALSE(FusedLinear(make_parts(4, 64, false, cpu, 6, {8})).fused());
}

TEST(FusedLinear, ErrorsNameTheProblem) {
  const std::vector<QuantizedLinear> parts = make_parts(4, 64, false, {}, 7);
  const QuantizedLinear whole = QuantizedLinear::concat(parts);
  EXPECT_NE(error_message([&] { whole.columns(60, 5); }).find("outside the layer's 64 outputs"), std::string::npos);
  EXPECT_NE(error_message([&] { whole.columns(0, 0); }).find("[QuantizedLinear::columns]"), std::string::npos);
  const QuantizedLinear other(random_tensor({8, 32}, DType::f32, 70), {}, 4, 32, {});
  EXPECT_NE(error_message([&] { FusedLinear({parts[0], other}); }).find("share their input"), std::string::npos);
  EXPECT_NE(error_message([&] { FusedLinear(std::vector<QuantizedLinear>{}); }).find("at least one"), std::string::npos);
  EXPECT_NE(error_message([&] { QuantizedLinear::concat({}); }).find("no layers"), std::string::npos);
  EXPECT_NE(error_message([&] { whole.quantized(8, 32); }).find("already quantized"), std::string::npos);
}

TEST(QuantizedLinearQuantized, EqualsQuantizingTheFloatWeightsAtConstruction) {
  const Tensor w = random_tensor({48, 96}, DType::f32, 80, 0.1f);
  const Tensor b = random_tensor({48}, DType::f32, 81);
  const QuantizedLinear dense(w, b, 16, 32, {});
  for (const int bits : {8, 4, 2})
    for (const ScaleMethod m : {ScaleMethod::absmax, ScaleMethod::mse}) {
      EXPECT_TRUE(same_weights(dense.quantized(bits, 32, m), QuantizedLinear(w, b, bits, 32, {}, m)))
          << bits;
    }
  EXPECT_NE(error_message([&] { dense.quantized(3, 32); }).find("bits must be 8, 4 or 2"), std::string::npos);
}

}  // namespace
}  // namespace marlin
