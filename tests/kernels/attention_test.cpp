// CPU attention kernels against a float64 softmax(q k^T) v written in the test: prefill and
// decode/extend over many shapes (odd T, GQA ratios 1/2/4/8, every head dim, sliding windows).
#include <gtest/gtest.h>

#include "attention_reference.h"
#include "marlin/attention.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::reference_attention;
using testing::relative_error;
using testing::to_double;

const int64_t kHeadDims[] = {64, 80, 96, 128, 256};

// Sets positions >= lens[b] of a cache [B, H, S, D] to NaN.
Tensor poison_tail(const Tensor& cache, const std::vector<int>& lens) {
  std::vector<float> x = cache.to_float_vector();
  const int64_t H = cache.size(1), S = cache.size(2), D = cache.size(3);
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t s = (static_cast<int64_t>(i) / D) % S, b = static_cast<int64_t>(i) / (D * S * H);
    if (s >= lens[static_cast<size_t>(b)]) x[i] = NAN;
  }
  return Tensor::from_vector(x, cache.shape(), DType::f32).to(cache.dtype());
}

double tolerance(DType t) { return t == DType::f32 ? 1e-5 : t == DType::f16 ? 2e-3 : 1.5e-2; }

TEST(AttentionCpu, PrefillMatchesFloat64Reference) {
  testing::PoisonScope poison;
  const struct { int64_t Hq, Hkv; } heads[] = {{4, 4}, {4, 2}, {8, 2}, {8, 1}};
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16};
  int seed = 0;
  for (int64_t D : kHeadDims)
    for (const auto& h : heads)
      for (int64_t T : {1, 7, 37})
        for (int64_t window : {0, 5}) {
          const DType dt = dtypes[seed % 3];
          ++seed;
          Tensor q = random_tensor({T, h.Hq, D}, dt, seed * 3);
          Tensor k = random_tensor({T, h.Hkv, D}, dt, seed * 3 + 1);
          Tensor v = random_tensor({T, h.Hkv, D}, dt, seed * 3 + 2);
          const float scale = 1.0f / std::sqrt(static_cast<float>(D));
          const auto got = to_double(ops::attention_prefill(q, k, v, scale, window));
          const auto ref = reference_attention(
              to_double(q), testing::token_major_to_cache(to_double(k), T, h.Hkv, D),
              testing::token_major_to_cache(to_double(v), T, h.Hkv, D), {static_cast<int>(T)}, 1,
              T, h.Hq, h.Hkv, T, D, scale, window);
          EXPECT_LT(relative_error(got, ref), tolerance(dt))
              << "D=" << D << " Hq=" << h.Hq << " Hkv=" << h.Hkv << " T=" << T << " window="
              << window << " " << dtype_name(dt);
        }
}

TEST(AttentionCpu, DecodeAndExtendMatchFloat64Reference) {
  testing::PoisonScope poison;
  int seed = 100;
  for (int64_t D : kHeadDims)
    for (int64_t group : {1, 2, 4, 8})
      for (int64_t T : {1, 3})
        for (DType dt : {DType::f32, DType::bf16}) {
          ++seed;
          const int64_t B = 3, Hkv = 2, Hq = Hkv * group, S = 41;
          const std::vector<int> lens{41, 3, 19};
          const int64_t window = seed % 3 == 0 ? 7 : 0;
          Tensor q = random_tensor({B, T, Hq, D}, dt, seed * 3);
          // Positions past a sequence's length hold NaN: reading one would show in the output.
          Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 1);
          Tensor vc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 2);
          kc = poison_tail(kc, lens);
          vc = poison_tail(vc, lens);
          const Tensor seq_lens = Tensor::from_vector(lens, {B}, DType::i32);
          const float scale = 0.7f / std::sqrt(static_cast<float>(D));
          const Tensor out = T == 1 ? ops::attention_decode(q.view({B, Hq, D}), kc, vc, seq_lens, scale, window)
                                    : ops::attention_extend(q, kc, vc, seq_lens, scale, window);
          const auto ref = reference_attention(to_double(q), to_double(kc), to_double(vc), lens,
                                               B, T, Hq, Hkv, S, D, scale, window);
          EXPECT_LT(relative_error(to_double(out), ref), tolerance(dt))
              << "D=" << D << " group=" << group << " T=" << T << " window=" << window << " "
              << dtype_name(dt);
        }
}

TEST(AttentionCpu, PrefillEqualsExtendOverTheSameTokens) {
  const int64_t T = 23, Hq = 4, Hkv = 2, D = 80;
  Tensor q = random_tensor({T, Hq, D}, DType::f32, 1);
  Tensor k = random_tensor({T, Hkv, D}, DType::f32, 2);
  Tensor v = random_tensor({T, Hkv, D}, DType::f32, 3);
  Tensor kc = Tensor::empty({1, Hkv, 32, D}, DType::f32), vc = Tensor::empty({1, Hkv, 32, D}, DType::f32);
  ops::attention_cache_write(kc, k.view({1, T, Hkv, D}).transpose(1, 2), 0);
  ops::attention_cache_write(vc, v.view({1, T, Hkv, D}).transpose(1, 2), 0);
  const Tensor lens = Tensor::from_vector(std::vector<int32_t>{static_cast<int32_t>(T)}, {1}, DType::i32);
  const auto a = ops::attention_prefill(q, k, v, 0.1f, 9).to_float_vector();
  const auto b = ops::attention_extend(q.view({1, T, Hq, D}), kc, vc, lens, 0.1f, 9).to_float_vector();
  EXPECT_EQ(a, b);
}

TEST(AttentionCpu, CacheWriteTakesAnyStrides) {
  const int64_t B = 2, H = 3, T = 4, D = 64, S = 9;
  Tensor cache = random_tensor({B, H, S, D}, DType::f16, 5);
  const std::vector<float> before = cache.to_float_vector();
  Tensor token_major = random_tensor({B, T, H, D}, DType::f16, 6);
  ops::attention_cache_write(cache, token_major.transpose(1, 2), 2);
  const std::vector<float> after = cache.to_float_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t d = 0; d < D; ++d) {
          const size_t i = static_cast<size_t>(((b * H + h) * S + s) * D + d);
          const bool written = s >= 2 && s < 2 + T;
          const float want = written ? static_cast<float>(token_major.item_as_double({b, s - 2, h, d})) : before[i];
          ASSERT_EQ(after[i], want) << b << " " << h << " " << s << " " << d;
        }
}

TEST(AttentionCpu, BadArgumentsAreClearErrors) {
  Tensor q = random_tensor({5, 6, 64}, DType::f16, 1);
  Tensor k = random_tensor({5, 4, 64}, DType::f16, 2);
  const auto message = testing::error_message;
  EXPECT_NE(message([&] { ops::attention_prefill(q, k, k, 1.0f); }).find("Hq=6"), std::string::npos);
  Tensor q72 = random_tensor({5, 4, 72}, DType::f16, 3);
  EXPECT_NE(message([&] { ops::attention_prefill(q72, q72, q72, 1.0f); }).find("head_dim=72"), std::string::npos);
  Tensor k32 = random_tensor({5, 6, 64}, DType::f32, 4);
  EXPECT_THROW(ops::attention_prefill(q, k32, k32, 1.0f), Error);
  EXPECT_THROW(ops::attention_prefill(q, q, q, 1.0f, -1), Error);
  Tensor kc = random_tensor({1, 2, 8, 64}, DType::f16, 5);
  Tensor qd = random_tensor({1, 4, 64}, DType::f16, 6);
  const Tensor lens9 = Tensor::from_vector(std::vector<int32_t>{9}, {1}, DType::i32);
  EXPECT_NE(message([&] { ops::attention_decode(qd, kc, kc, lens9, 1.0f); }).find("seq_lens[0]=9"), std::string::npos);
  const Tensor lens0 = Tensor::from_vector(std::vector<int32_t>{0}, {1}, DType::i32);
  EXPECT_THROW(ops::attention_decode(qd, kc, kc, lens0, 1.0f), Error);
  EXPECT_THROW(ops::attention_cache_write(kc, random_tensor({1, 2, 3, 64}, DType::f16, 7), 6), Error);
}

}  // namespace
}  // namespace marlin
