// Per-row lengths on the CPU: attention_extend over right-padded rows (new_tokens) against a
// float64 reference, cache writes at positions read from a lengths tensor (padding never
// written), the length ops (add_lengths, sequence_positions) and their errors, and the errors
// of the one-call decode steps that write the cache at such positions.
#include <gtest/gtest.h>

#include "attention_reference.h"
#include "marlin/attention.h"
#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::reference_attention;
using testing::relative_error;
using testing::to_double;

Tensor i32(const std::vector<int32_t>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::i32);
}

// Positions >= lens[b] of a cache [B, H, S, D] set to NaN: reading one shows in the output.
Tensor poison_tail(const Tensor& cache, const std::vector<int32_t>& lens) {
  std::vector<float> x = cache.to_float_vector();
  const int64_t H = cache.size(1), S = cache.size(2), D = cache.size(3);
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t s = (static_cast<int64_t>(i) / D) % S, b = static_cast<int64_t>(i) / (D * S * H);
    if (s >= lens[static_cast<size_t>(b)]) x[i] = NAN;
  }
  return Tensor::from_vector(x, cache.shape(), DType::f32).to(cache.dtype());
}

// Row b of a [B, ...] float64 buffer of `row` elements per row.
std::vector<double> row_of(const std::vector<double>& x, int64_t b, int64_t row) {
  return {x.begin() + b * row, x.begin() + (b + 1) * row};
}

// What attention_extend with new_tokens promises: query t of row b at position
// lens[b] - fresh[b] + t, the padding queries (t >= fresh[b]) at the row's last valid position,
// a row without keys all zeros. Each query is one float64 decode over its own row.
std::vector<double> padded_reference(const Tensor& q, const Tensor& kc, const Tensor& vc,
                                     const std::vector<int32_t>& lens,
                                     const std::vector<int32_t>& fresh, double scale,
                                     int64_t window) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = kc.size(1), S = kc.size(2);
  const auto qd = to_double(q), kd = to_double(kc), vd = to_double(vc);
  std::vector<double> out(qd.size(), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const auto k_row = row_of(kd, b, Hkv * S * D), v_row = row_of(vd, b, Hkv * S * D);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t pos = std::min<int64_t>(lens[b] - fresh[b] + t, lens[b] - 1);
      if (pos < 0) continue;
      const std::vector<double> q_tok(qd.begin() + (b * T + t) * Hq * D,
                                      qd.begin() + (b * T + t + 1) * Hq * D);
      const auto o = reference_attention(q_tok, k_row, v_row, {static_cast<int>(pos + 1)}, 1, 1,
                                         Hq, Hkv, S, D, scale, window);
      std::copy(o.begin(), o.end(), out.begin() + (b * T + t) * Hq * D);
    }
  }
  return out;
}

TEST(AttentionLengthsCpu, PaddedExtendMatchesFloat64Reference) {
  testing::PoisonScope poison;
  // A full fresh row, a continuing row with padding, a row with no new token, a fresh padded
  // row, and an empty row (no key at all).
  const std::vector<int32_t> lens{6, 9, 5, 3, 0}, fresh{6, 2, 0, 3, 0};
  const int64_t B = 5, T = 6, Hkv = 2, S = 13;
  int seed = 300;
  for (int64_t D : {64, 80, 96, 128, 256})
    for (int64_t group : {1, 4})
      for (DType dt : {DType::f32, DType::bf16})
        for (int64_t window : {0, 4}) {
          ++seed;
          const int64_t Hq = Hkv * group;
          Tensor q = random_tensor({B, T, Hq, D}, dt, seed * 3);
          Tensor kc = poison_tail(random_tensor({B, Hkv, S, D}, dt, seed * 3 + 1), lens);
          Tensor vc = poison_tail(random_tensor({B, Hkv, S, D}, dt, seed * 3 + 2), lens);
          const float scale = 0.8f / std::sqrt(static_cast<float>(D));
          const Tensor out = ops::attention_extend(q, kc, vc, i32(lens), scale, window, i32(fresh));
          const auto ref = padded_reference(q, kc, vc, lens, fresh, scale, window);
          EXPECT_LT(relative_error(to_double(out), ref), dt == DType::f32 ? 1e-5 : 1.5e-2)
              << "D=" << D << " group=" << group << " window=" << window << " " << dtype_name(dt);
          const auto empty_row = row_of(to_double(out), 4, T * Hq * D);
          EXPECT_EQ(empty_row, std::vector<double>(empty_row.size(), 0.0));
        }
}

TEST(AttentionLengthsCpu, NewTokensOfTEqualsPlainExtend) {
  const int64_t B = 2, T = 3, Hq = 4, Hkv = 2, D = 64, S = 10;
  Tensor q = random_tensor({B, T, Hq, D}, DType::f32, 1);
  Tensor kc = random_tensor({B, Hkv, S, D}, DType::f32, 2);
  Tensor vc = random_tensor({B, Hkv, S, D}, DType::f32, 3);
  const Tensor lens = i32({10, 4});
  EXPECT_EQ(ops::attention_extend(q, kc, vc, lens, 0.1f, 0, i32({3, 3})).to_float_vector(),
            ops::attention_extend(q, kc, vc, lens, 0.1f).to_float_vector());
}

TEST(AttentionLengthsCpu, CacheWriteAtRowPositionsSkipsPadding) {
  const int64_t B = 3, H = 2, T = 4, D = 64, S = 10;
  const std::vector<int32_t> starts{0, 5, 3};
  for (const bool with_counts : {true, false}) {
    const std::vector<int32_t> counts = with_counts ? std::vector<int32_t>{4, 1, 0}
                                                    : std::vector<int32_t>{4, 4, 4};
    Tensor cache = random_tensor({B, H, S, D}, DType::bf16, 5);
    const std::vector<float> before = cache.to_float_vector();
    Tensor token_major = random_tensor({B, T, H, D}, DType::bf16, 6);
    ops::attention_cache_write(cache, token_major.transpose(1, 2), i32(starts),
                               with_counts ? i32(counts) : Tensor());
    const std::vector<float> after = cache.to_float_vector();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t d = 0; d < D; ++d) {
            const size_t i = static_cast<size_t>(((b * H + h) * S + s) * D + d);
            const int64_t t = s - starts[b];
            const bool written = t >= 0 && t < counts[b];
            const float want = written ? static_cast<float>(token_major.item_as_double({b, t, h, d}))
                                       : before[i];
            ASSERT_EQ(after[i], want) << "counts=" << with_counts << " b=" << b << " h=" << h
                                      << " s=" << s << " d=" << d;
          }
  }
}

// The keys-and-values write equals two single writes, and rejects mismatched pairs.
TEST(AttentionLengthsCpu, CacheWriteOfKeysAndValuesEqualsTwoWrites) {
  const int64_t B = 2, H = 2, T = 3, D = 64, S = 8;
  Tensor k_cache = random_tensor({B, H, S, D}, DType::f16, 1), v_cache = random_tensor({B, H, S, D}, DType::f16, 2);
  Tensor k_want = k_cache.clone(), v_want = v_cache.clone();
  Tensor k = random_tensor({B, T, H, D}, DType::f16, 3), v = random_tensor({B, T, H, D}, DType::f16, 4);
  const Tensor starts = i32({1, 4}), counts = i32({3, 2});
  ops::attention_cache_write_kv(k_cache, k.transpose(1, 2), v_cache, v.transpose(1, 2), starts, counts);
  ops::attention_cache_write(k_want, k.transpose(1, 2), starts, counts);
  ops::attention_cache_write(v_want, v.transpose(1, 2), starts, counts);
  EXPECT_EQ(k_cache.to_float_vector(), k_want.to_float_vector());
  EXPECT_EQ(v_cache.to_float_vector(), v_want.to_float_vector());
  EXPECT_NE(k_cache.to_float_vector(), v_cache.to_float_vector());
  Tensor short_v = random_tensor({B, H, T - 1, D}, DType::f16, 5);
  EXPECT_NE(testing::error_message([&] {
              ops::attention_cache_write_kv(k_cache, k.transpose(1, 2), v_cache, short_v, starts);
            }).find("same shapes"),
            std::string::npos);
}

TEST(AttentionLengthsCpu, AddLengthsAndPositions) {
  const Tensor lens = i32({0, 7, 3});
  Tensor out = Tensor::empty({3}, DType::i32);
  ops::add_lengths(lens, 2, {}, out);
  EXPECT_EQ(out.to_float_vector(), (std::vector<float>{2, 9, 5}));
  ops::add_lengths(lens, 2, i32({5, 0, 1}), out);
  EXPECT_EQ(out.to_float_vector(), (std::vector<float>{5, 7, 4}));
  Tensor in_place = lens.clone();
  ops::add_lengths(in_place, 1, {}, in_place);
  EXPECT_EQ(in_place.to_float_vector(), (std::vector<float>{1, 8, 4}));
  EXPECT_EQ(ops::sequence_positions(lens, 3).to_float_vector(),
            (std::vector<float>{0, 1, 2, 7, 8, 9, 3, 4, 5}));
  EXPECT_EQ(ops::sequence_positions(lens, 1).to_float_vector(), (std::vector<float>{0, 7, 3}));
}

TEST(AttentionLengthsCpu, BadLengthsAreClearErrors) {
  const auto message = testing::error_message;
  Tensor cache = random_tensor({2, 2, 8, 64}, DType::f16, 1);
  Tensor fresh = random_tensor({2, 2, 3, 64}, DType::f16, 2);
  EXPECT_NE(message([&] { ops::attention_cache_write(cache, fresh, i32({0, 6})); }).find("row 1"),
            std::string::npos);
  EXPECT_NE(message([&] { ops::attention_cache_write(cache, fresh, i32({0, 0}), i32({4, 1})); })
                .find("counts[0]=4"),
            std::string::npos);
  EXPECT_NE(message([&] { ops::attention_cache_write(cache, fresh, i32({0})); }).find("starts"),
            std::string::npos);
  const Tensor i64_lens = Tensor::from_vector(std::vector<int64_t>{0, 0}, {2}, DType::i64);
  EXPECT_NE(message([&] { ops::attention_cache_write(cache, fresh, i64_lens); }).find("i32"),
            std::string::npos);
  Tensor q = random_tensor({2, 3, 4, 64}, DType::f16, 3);
  EXPECT_NE(message([&] { ops::attention_extend(q, cache, cache, i32({5, 5}), 1.0f, 0, i32({4, 1})); })
                .find("new_tokens[0]=4"),
            std::string::npos);
  EXPECT_NE(message([&] { ops::attention_extend(q, cache, cache, i32({5, 1}), 1.0f, 0, i32({3, 2})); })
                .find("seq_lens[1]=1"),
            std::string::npos);
  Tensor out = Tensor::empty({3}, DType::i32);
  EXPECT_THROW(ops::add_lengths(i32({1, 2}), 1, {}, out), Error);
  EXPECT_THROW(ops::sequence_positions(i32({1, 2}), 0), Error);
}

// The one-call decode steps (rope_attention_decode for GQA, mla_rope_cache_write for MLA's
// latent cache) name what is wrong; a good call goes through.
TEST(AttentionLengthsCpu, OneCallDecodeStepsNameBadInputs) {
  const auto message = testing::error_message;
  auto has = [](const std::string& text, const char* part) { return text.find(part) != std::string::npos; };
  const ops::RopeParams rope = ops::rope_params(10000, 64, RopeScaling{}, 4096, ops::RopeLayout::half_split);
  const Tensor q = random_tensor({2, 4, 64}, DType::f32, 1), k = random_tensor({2, 2, 64}, DType::f32, 2);
  const Tensor v = random_tensor({2, 2, 64}, DType::f32, 3), pos = i32({3, 5});
  Tensor kc = random_tensor({2, 2, 8, 64}, DType::f32, 4), vc = random_tensor({2, 2, 8, 64}, DType::f32, 5);
  auto decode = [&](const Tensor& qq, const Tensor& starts, Tensor& k_cache) {
    return ops::rope_attention_decode(qq.clone(), k.clone(), v, pos, rope, k_cache, vc, starts, 0.125f);
  };
  EXPECT_EQ(decode(q, i32({3, 5}), kc).shape(), (Shape{2, 4, 64}));
  EXPECT_TRUE(has(message([&] { decode(q, i32({3, 8}), kc); }), "row 1")) << "a start past S_max";
  EXPECT_TRUE(has(message([&] { decode(q, i32({3}), kc); }), "starts"));
  Tensor kc16 = kc.to(DType::f16);
  EXPECT_TRUE(has(message([&] { decode(q, i32({3, 5}), kc16); }), "k_cache"));
  EXPECT_TRUE(has(message([&] { decode(random_tensor({2, 3, 64}, DType::f32, 6), i32({3, 5}), kc); }), "Hq=3"));

  const int64_t R = 96, Dr = 32;
  const ops::RopeParams mla_rope = ops::rope_params(10000, Dr, RopeScaling{}, 4096, ops::RopeLayout::interleaved);
  const Tensor q_rope = random_tensor({2, 3, Dr}, DType::f32, 7), ckv = random_tensor({2, 1, R + Dr}, DType::f32, 8);
  Tensor latent_cache = random_tensor({2, 1, 8, R + Dr}, DType::f32, 9);
  auto append = [&](const Tensor& weight, const Tensor& starts, Tensor& cache) {
    Tensor row = ckv.clone(), qr = q_rope.clone();
    ops::mla_rope_cache_write(qr, row.narrow(2, R, Dr), row.narrow(2, 0, R), pos, mla_rope, weight, 1e-6, cache, starts);
  };
  const Tensor weight = random_tensor({R}, DType::f32, 10);
  append(weight, i32({0, 7}), latent_cache);
  EXPECT_TRUE(has(message([&] { append(random_tensor({R - 1}, DType::f32, 11), i32({0, 7}), latent_cache); }),
                  "norm_weight"));
  EXPECT_TRUE(has(message([&] { append(weight.to(DType::bf16), i32({0, 7}), latent_cache); }), "norm_weight"));
  EXPECT_TRUE(has(message([&] { append(weight, i32({0, 8}), latent_cache); }), "row 1"));
  Tensor narrow_cache = random_tensor({2, 1, 8, R}, DType::f32, 12);
  EXPECT_TRUE(has(message([&] { append(weight, i32({0, 7}), narrow_cache); }), "R + Dr"));
}

}  // namespace
}  // namespace marlin
