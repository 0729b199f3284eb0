// MLA attention on the CPU against a float64 reference over latent (absorbed) and expanded
// operands, strided slices, rows of different lengths and head dims that are no multiple of any
// tile; the absorbed form of a whole attention against its expanded form; the per-head product.
#include <gtest/gtest.h>

#include "marlin/mla_ops.h"
#include "mla_reference.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::make_mla_case;
using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

double tolerance(DType t) { return t == DType::f32 ? 1e-5 : t == DType::f16 ? 2e-3 : 1.5e-2; }

TEST(MlaAttentionCpu, MatchesFloat64Reference) {
  testing::PoisonScope poison;
  struct Case {
    bool latent;
    int64_t B, T, H, S, Dn, Dr, Dv;
    std::vector<int> lens;
  };
  const Case cases[] = {
      {true, 1, 1, 5, 40, 32, 16, 32, {40}},          // decode over a full cache
      {true, 2, 1, 20, 33, 512, 64, 512, {1, 33}},    // GLM-4.7-Flash's latent, one row of length 1
      {true, 3, 4, 3, 50, 96, 8, 96, {4, 17, 50}},    // extend: 4 new tokens per row
      {true, 1, 7, 1, 7, 40, 6, 40, {7}},             // a prefill in the latent form
      {false, 1, 9, 4, 9, 192, 64, 256, {9}},         // GLM-4.7-Flash expanded prefill
      {false, 2, 6, 3, 6, 48, 16, 80, {6, 6}},        // Dn != Dv
      {false, 1, 13, 2, 13, 128, 64, 128, {13}},      // DeepSeek-V3
      {false, 2, 3, 6, 11, 24, 10, 40, {3, 11}},      // expanded keys over a longer sequence
  };
  const DType dtypes[] = {DType::f32, DType::bf16, DType::f16};
  int seed = 1;
  for (const Case& c : cases)
    for (DType dt : dtypes) {
      seed += 10;
      const auto m = make_mla_case(c.latent, c.B, c.T, c.H, c.S, c.Dn, c.Dr, c.Dv, c.lens, dt, seed);
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dn + c.Dr));
      const Tensor out = ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens, scale);
      ASSERT_EQ(out.shape(), (Shape{c.B, c.T, c.H, c.Dv}));
      const auto ref = testing::reference_mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope,
                                                        m.v, m.lens, scale);
      EXPECT_LT(relative_error(to_double(out), ref), tolerance(dt))
          << (c.latent ? "latent" : "expanded") << " B=" << c.B << " T=" << c.T << " H=" << c.H
          << " S=" << c.S << " Dn=" << c.Dn << " Dv=" << c.Dv << " " << dtype_name(dt);
    }
}

// The keys past a row's length are never read: NaN there leaves the result finite and equal.
TEST(MlaAttentionCpu, IgnoresKeysPastEachRowsLength) {
  const int64_t S = 30, R = 64, Dr = 16;
  auto m = make_mla_case(true, 2, 1, 4, S, R, Dr, R, {5, 12}, DType::f32, 7);
  const Tensor before = ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens, 0.1f);
  std::vector<float> cache = m.k_nope.contiguous().to_float_vector();
  // Rebuild the cache with NaN past each length, as strided slices again.
  Tensor full = Tensor::empty({2, S, 1, R + Dr}, DType::f32);
  float* p = full.data<float>();
  const std::vector<float> kn = m.k_nope.contiguous().to_float_vector(),
                           kr = m.k_rope.contiguous().to_float_vector();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const bool past = s >= m.lens[static_cast<size_t>(b)];
      for (int64_t d = 0; d < R + Dr; ++d)
        p[(b * S + s) * (R + Dr) + d] =
            past ? NAN : d < R ? kn[static_cast<size_t>((b * S + s) * R + d)]
                               : kr[static_cast<size_t>((b * S + s) * Dr + d - R)];
    }
  const Tensor after = ops::mla_attention(m.q_nope, m.q_rope, full.narrow(3, 0, R),
                                          full.narrow(3, R, Dr), full.narrow(3, 0, R), m.seq_lens, 0.1f);
  EXPECT_EQ(after.to_float_vector(), before.to_float_vector());
}

// Right-padded rows (prompts of different lengths): row b's first new_tokens[b] queries end at
// its length, the padding queries after them see the row's whole prefix; keys at or past a
// row's length (NaN here) are never read, in the latent and the expanded form.
TEST(MlaAttentionCpu, RightPaddedRowsMaskEachRowToItsKeys) {
  const int64_t T = 6, S = 20;
  const std::vector<int> lens{3, 20, 9}, news{3, 6, 0};
  for (const bool latent : {true, false})
    for (DType dt : {DType::f32, DType::bf16}) {
      auto m = make_mla_case(latent, 3, T, 4, S, 40, 8, latent ? 40 : 24, lens, dt, latent ? 31 : 37);
      const Tensor new_tokens = Tensor::from_vector(news, {3}, DType::i32);
      const float scale = 0.2f;
      const Tensor out = ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens,
                                            scale, new_tokens);
      const auto ref = testing::reference_mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v,
                                                        m.lens, scale, news);
      EXPECT_LT(relative_error(to_double(out), ref), tolerance(dt)) << (latent ? "latent" : "expanded");
      for (const float x : out.to_float_vector()) ASSERT_TRUE(std::isfinite(x));
    }
  // NaN keys past each length change nothing.
  const int64_t R = 32, Dr = 8;
  auto m = make_mla_case(true, 3, T, 2, S, R, Dr, R, lens, DType::f32, 5);
  const Tensor new_tokens = Tensor::from_vector(news, {3}, DType::i32);
  const Tensor before = ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens,
                                           0.2f, new_tokens);
  const std::vector<float> kn = m.k_nope.contiguous().to_float_vector(),
                           kr = m.k_rope.contiguous().to_float_vector();
  Tensor full = Tensor::empty({3, S, 1, R + Dr}, DType::f32);
  float* p = full.data<float>();
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t d = 0; d < R + Dr; ++d)
        p[(b * S + j) * (R + Dr) + d] =
            j >= lens[static_cast<size_t>(b)] ? NAN
            : d < R ? kn[static_cast<size_t>((b * S + j) * R + d)]
                    : kr[static_cast<size_t>((b * S + j) * Dr + d - R)];
  const Tensor after = ops::mla_attention(m.q_nope, m.q_rope, full.narrow(3, 0, R), full.narrow(3, R, Dr),
                                          full.narrow(3, 0, R), m.seq_lens, 0.2f, new_tokens);
  EXPECT_EQ(after.to_float_vector(), before.to_float_vector());
  // More real tokens than the row holds, or than T, is a clear error.
  for (const std::vector<int>& bad : {std::vector<int>{4, 6, 0}, std::vector<int>{3, 7, 0}})
    EXPECT_NE(testing::error_message([&] {
                ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens, 0.2f,
                                   Tensor::from_vector(bad, {3}, DType::i32));
              }).find("new_tokens["),
              std::string::npos);
}

// Attention over the latent with W_UK folded into the query and W_UV applied after equals
// attention over the keys and values expanded from the latent, within fp32 rounding.
TEST(MlaAttentionCpu, AbsorbedEqualsExpanded) {
  for (const auto& [H, R, Dn, Dr, Dv, S] : std::vector<std::array<int64_t, 6>>{
           {4, 64, 32, 16, 48, 19}, {20, 512, 192, 64, 256, 37}, {3, 96, 40, 8, 24, 5}}) {
    const int64_t T = S;  // a prefill: every position a query
    const Tensor latent = random_tensor({1, S, 1, R + Dr}, DType::f32, H * 7 + 1);
    const Tensor q = random_tensor({1, T, H, Dn + Dr}, DType::f32, H * 7 + 2);
    // kv_b_proj's weight as Transformers holds it: [H * (Dn + Dv), R].
    const Tensor w_kv_b = random_tensor({H * (Dn + Dv), R}, DType::f32, H * 7 + 3, 0.1f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dn + Dr));
    const Tensor seq_lens = Tensor::from_vector(std::vector<int32_t>{static_cast<int32_t>(S)}, {1}, DType::i32);

    // Expanded: kv[s, h, :] = W_h latent[s] per head, then attention over per-head keys.
    const std::vector<float> wf = w_kv_b.to_float_vector(), lf = latent.to_float_vector();
    Tensor kv = Tensor::empty({1, S, H, Dn + Dv}, DType::f32);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t o = 0; o < H * (Dn + Dv); ++o) {
        double acc = 0;
        for (int64_t r = 0; r < R; ++r) acc += double(wf[o * R + r]) * lf[s * (R + Dr) + r];
        kv.data<float>()[s * H * (Dn + Dv) + o] = static_cast<float>(acc);
      }
    const Tensor expanded = ops::mla_attention(q.narrow(3, 0, Dn), q.narrow(3, Dn, Dr), kv.narrow(3, 0, Dn),
                                               latent.narrow(3, R, Dr), kv.narrow(3, Dn, Dv), seq_lens, scale);

    // Absorbed: W_UK[h] [Dn, R] and W_UV[h] [R, Dv] cut from the same weight.
    Tensor w_uk = Tensor::empty({H, Dn, R}, DType::f32), w_uv = Tensor::empty({H, R, Dv}, DType::f32);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t n = 0; n < Dn; ++n)
          w_uk.data<float>()[(h * Dn + n) * R + r] = wf[(h * (Dn + Dv) + n) * R + r];
        for (int64_t v = 0; v < Dv; ++v)
          w_uv.data<float>()[(h * R + r) * Dv + v] = wf[(h * (Dn + Dv) + Dn + v) * R + r];
      }
    const Tensor q_lat = ops::mla_head_matmul(q.view({T, H, Dn + Dr}).narrow(2, 0, Dn), w_uk);
    const Tensor lat = latent.narrow(3, 0, R);
    const Tensor out_lat = ops::mla_attention(q_lat.view({1, T, H, R}), q.narrow(3, Dn, Dr), lat,
                                              latent.narrow(3, R, Dr), lat, seq_lens, scale);
    const Tensor absorbed = ops::mla_head_matmul(out_lat.view({T, H, R}), w_uv);
    const double err = relative_error(to_double(absorbed), to_double(expanded));
    std::printf("[ H=%lld R=%lld ] absorbed vs expanded relative difference %.3g\n",
                static_cast<long long>(H), static_cast<long long>(R), err);
    EXPECT_LT(err, 2e-6);
    EXPECT_GT(err, 0.0);  // two different computations: equal only up to rounding
  }
}

TEST(MlaHeadMatmulCpu, MatchesFloat64Reference) {
  testing::PoisonScope poison;
  int seed = 3;
  for (const auto& [M, H, K, N] : std::vector<std::array<int64_t, 4>>{
           {1, 20, 192, 512}, {5, 3, 37, 11}, {2, 1, 512, 256}, {7, 4, 1, 9}})
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      // x as a strided slice of a wider projection, as the layer passes q_nope.
      const Tensor wide = random_tensor({M, H, K + 5}, dt, ++seed);
      const Tensor x = wide.narrow(2, 0, K);
      const Tensor w = random_tensor({H, K, N}, dt, ++seed);
      const Tensor out = ops::mla_head_matmul(x, w);
      ASSERT_EQ(out.shape(), (Shape{M, H, N}));
      EXPECT_LT(relative_error(to_double(out), testing::reference_head_matmul(x, w)), tolerance(dt))
          << "M=" << M << " H=" << H << " K=" << K << " N=" << N << " " << dtype_name(dt);
    }
}

TEST(MlaOpsErrors, NameTheBadArgument) {
  using testing::error_message;
  auto m = make_mla_case(true, 1, 1, 4, 8, 32, 16, 32, {8}, DType::f32, 1);
  const Tensor bad_lens = Tensor::from_vector(std::vector<int32_t>{9}, {1}, DType::i32);
  EXPECT_NE(error_message([&] {
              ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, bad_lens, 1.0f);
            }).find("seq_lens[0]=9"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              ops::mla_attention(m.q_nope, m.q_rope, m.k_rope, m.k_rope, m.v, m.seq_lens, 1.0f);
            }).find("k_nope"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v.to(DType::bf16),
                                 m.seq_lens, 1.0f);
            }).find("v [B, S, Hv, Dv] must have q_nope's dtype"),
            std::string::npos);
  const Tensor three_heads = random_tensor({1, 8, 3, 32}, DType::f32, 2);
  EXPECT_NE(error_message([&] {
              ops::mla_attention(m.q_nope, m.q_rope, three_heads, m.k_rope, m.v, m.seq_lens, 1.0f);
            }).find("1 or H=4 heads"),
            std::string::npos);
  const Tensor x = random_tensor({2, 4, 8}, DType::f32, 3), w = random_tensor({4, 9, 5}, DType::f32, 4);
  EXPECT_NE(error_message([&] { ops::mla_head_matmul(x, w); }).find("[H, K] = [4, 8"), std::string::npos);
}

}  // namespace
}  // namespace marlin
