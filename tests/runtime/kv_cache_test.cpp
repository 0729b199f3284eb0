// KVCache: writes land at the current position (each row's own), views cover what was written,
// overflow is a clear error naming the row, the device lengths follow the host mirror, and
// decoding token by token over the cache equals one causal prefill.
#include <gtest/gtest.h>

#include <cstring>

#include "marlin/attention.h"
#include "marlin/kv_cache.h"
#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;

TEST(KVCache, UpdateWritesAtThePositionAndReturnsThePrefix) {
  KVCache cache({.num_layers = 2, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 10}, 2);
  EXPECT_EQ(cache.seq_len(), 0);
  EXPECT_EQ(cache.keys(1).shape(), (Shape{2, 2, 10, 64}));
  Tensor k0 = random_tensor({2, 2, 3, 64}, DType::f16, 1), v0 = random_tensor({2, 2, 3, 64}, DType::f16, 2);
  auto [k, v] = cache.update(0, k0, v0);
  EXPECT_EQ(k.shape(), (Shape{2, 2, 3, 64}));
  EXPECT_EQ(k.contiguous().to_float_vector(), k0.to_float_vector());
  EXPECT_EQ(v.contiguous().to_float_vector(), v0.to_float_vector());
  cache.advance(3);
  // One more token given token-major [B, T, H, D] and seen as [B, H, T, D] without a copy.
  Tensor k1 = random_tensor({2, 1, 2, 64}, DType::f16, 3), v1 = random_tensor({2, 1, 2, 64}, DType::f16, 4);
  auto [k2, v2] = cache.update(0, k1.transpose(1, 2), v1.transpose(1, 2));
  ASSERT_EQ(k2.shape(), (Shape{2, 2, 4, 64}));
  EXPECT_EQ(k2.narrow(2, 0, 3).contiguous().to_float_vector(), k0.to_float_vector());
  EXPECT_EQ(k2.narrow(2, 3, 1).contiguous().to_float_vector(), k1.transpose(1, 2).contiguous().to_float_vector());
  EXPECT_EQ(v2.narrow(2, 3, 1).contiguous().to_float_vector(), v1.transpose(1, 2).contiguous().to_float_vector());
  cache.advance();
  EXPECT_EQ(cache.seq_len(), 4);
  EXPECT_EQ(cache.seq_lens(1).to_float_vector(), (std::vector<float>{5, 5}));
  cache.reset();
  EXPECT_EQ(cache.seq_len(), 0);
  auto [k3, v3] = cache.update(1, k0, v0);
  EXPECT_EQ(k3.size(2), 3);
}

TEST(KVCache, OverflowAndBadInputsAreClearErrors) {
  KVCache cache({.num_layers = 1, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 5});
  Tensor k4 = random_tensor({1, 2, 4, 64}, DType::f16, 1);
  cache.update(0, k4, k4);
  cache.advance(4);
  try {
    cache.update(0, random_tensor({1, 2, 2, 64}, DType::f16, 2), random_tensor({1, 2, 2, 64}, DType::f16, 3));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_seq_len=5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("position 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cache.advance(2), Error);
  EXPECT_EQ(cache.seq_len(), 4);  // a failed advance changes nothing
  cache.advance(1);
  EXPECT_THROW(cache.update(0, random_tensor({1, 2, 1, 64}, DType::f16, 4), random_tensor({1, 2, 1, 64}, DType::f16, 5)), Error);
  cache.reset();
  EXPECT_THROW(cache.update(1, k4, k4), Error);                               // layer
  EXPECT_THROW(cache.update(0, k4.to(DType::bf16), k4.to(DType::bf16)), Error);  // dtype
  EXPECT_THROW(cache.update(0, random_tensor({1, 3, 4, 64}, DType::f16, 6), k4), Error);
  EXPECT_THROW(KVCache({.num_layers = 1, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 0}), Error);
  EXPECT_THROW(KVCache({.num_layers = 1, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 4}, 0), Error);
}

TEST(KVCache, DecodingTokenByTokenEqualsPrefill) {
  const int64_t T = 13, Hq = 8, Hkv = 2, D = 128, window = 6;
  const float scale = 1.0f / std::sqrt(128.0f);
  Tensor q = random_tensor({T, Hq, D}, DType::f32, 1);
  Tensor k = random_tensor({T, Hkv, D}, DType::f32, 2);
  Tensor v = random_tensor({T, Hkv, D}, DType::f32, 3);
  const std::vector<float> prefill = ops::attention_prefill(q, k, v, scale, window).to_float_vector();
  KVCache cache({.num_layers = 1, .num_kv_heads = Hkv, .head_dim = D, .max_seq_len = 16, .dtype = DType::f32});
  // The first 5 tokens at once (prefill into the cache), then one at a time.
  auto step = [&](int64_t t0, int64_t n) {
    auto kt = k.narrow(0, t0, n).view({1, n, Hkv, D}).transpose(1, 2);
    auto vt = v.narrow(0, t0, n).view({1, n, Hkv, D}).transpose(1, 2);
    cache.update(0, kt, vt);
    const Tensor out = ops::attention_extend(q.narrow(0, t0, n).view({1, n, Hq, D}), cache.keys(0),
                                             cache.values(0), cache.seq_lens(n), scale, window);
    cache.advance(n);
    const std::vector<float> got = out.to_float_vector();
    const std::vector<float> want(prefill.begin() + t0 * Hq * D, prefill.begin() + (t0 + n) * Hq * D);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-6) << "t0=" << t0 << " i=" << i;
  };
  step(0, 5);
  for (int64_t t = 5; t < T; ++t) step(t, 1);
}

// attend_rotated (RoPE, cache append and attention of a decode step in one call) token by
// token equals RoPE on the whole sequence then one causal prefill; the steps it cannot take
// (several tokens, per-row counts, a keys-only cache) are clear errors.
TEST(KVCache, AttendRotatedTokenByTokenEqualsRopeThenPrefill) {
  const int64_t T = 11, Hq = 6, Hkv = 2, D = 64, window = 5;
  const float scale = 0.125f;
  const ops::RopeParams rope = ops::rope_params(10000, D / 2, RopeScaling{}, 4096, ops::RopeLayout::half_split);
  const Tensor qkv = random_tensor({T, Hq + 2 * Hkv, D}, DType::f32, 7);
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(t);
  Tensor whole = qkv.clone();
  Tensor q = whole.narrow(1, 0, Hq), k = whole.narrow(1, Hq, Hkv);
  ops::rope(q, k, Tensor::from_vector(pos, {T}, DType::i32), rope);
  const std::vector<float> want =
      ops::attention_prefill(q.contiguous(), k.contiguous(), whole.narrow(1, Hq + Hkv, Hkv).contiguous(), scale, window)
          .to_float_vector();
  KVCache cache({.num_layers = 1, .num_kv_heads = Hkv, .head_dim = D, .max_seq_len = T, .dtype = DType::f32});
  for (int64_t t = 0; t < T; ++t) {
    Tensor x = qkv.narrow(0, t, 1).clone();
    const Tensor at = Tensor::from_vector(std::vector<int32_t>{static_cast<int32_t>(t)}, {1}, DType::i32);
    const std::vector<float> got = cache
                                       .attend_rotated(0, x.narrow(1, 0, Hq), x.narrow(1, Hq, Hkv),
                                                       x.narrow(1, Hq + Hkv, Hkv), at, rope, scale, window)
                                       .to_float_vector();
    cache.advance();
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[static_cast<size_t>(t * Hq * D) + i], 1e-6) << "t=" << t << " i=" << i;
  }
  // Full now; and the steps attend_rotated does not take.
  KVCache two({.num_layers = 1, .num_kv_heads = Hkv, .head_dim = D, .max_seq_len = 8, .dtype = DType::f32}, 2);
  const Tensor x2 = random_tensor({4, Hq + 2 * Hkv, D}, DType::f32, 8);
  const Tensor at2 = Tensor::from_vector(std::vector<int32_t>{0, 1, 0, 1}, {4}, DType::i32);
  auto attend = [&](KVCache& c, const Tensor& x, const Tensor& p) {
    return c.attend_rotated(0, x.narrow(1, 0, Hq), x.narrow(1, Hq, Hkv), x.narrow(1, Hq + Hkv, Hkv), p, rope, scale);
  };
  EXPECT_THROW(attend(cache, qkv.narrow(0, 0, 1).clone(), Tensor::from_vector(std::vector<int32_t>{0}, {1}, DType::i32)),
               Error);  // no room left
  EXPECT_THROW(attend(two, x2, at2), Error);  // two tokens a row
  two.begin_step(1, {1, 0});
  try {
    attend(two, x2.narrow(0, 0, 2).clone(), at2.narrow(0, 0, 2).clone());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("per-row counts"), std::string::npos) << e.what();
  }
  KVCache latent({.num_layers = 1, .num_kv_heads = 1, .head_dim = D, .max_seq_len = 8, .dtype = DType::f32,
                  .keys_only = true});
  EXPECT_THROW(attend(latent, x2.narrow(0, 0, 1).clone(), at2.narrow(0, 0, 1).clone()), Error);
}

std::vector<float> floats(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

// Equal bit for bit (the poison of unwritten entries is NaN, which == would never match).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Rows of different lengths: a padded step writes only each row's real tokens at its own
// position, then one-token steps and per-row advances move each row on its own.
TEST(KVCache, RowsKeepTheirOwnLengths) {
  testing::PoisonScope poison;
  const int64_t B = 3, H = 2, D = 64, S = 8;
  KVCache cache({.num_layers = 2, .num_kv_heads = H, .head_dim = D, .max_seq_len = S, .dtype = DType::f32}, B);
  EXPECT_EQ(cache.lengths().to_float_vector(), (std::vector<float>{0, 0, 0}));
  // Everything the cache holds, by (layer, b, h, s): what we expect it to read back.
  std::vector<std::vector<float>> want{cache.keys(0).to_float_vector(), cache.keys(1).to_float_vector()};
  auto expect_rows = [&](int64_t layer, const Tensor& fresh, int64_t b, int64_t t, int64_t at) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d)
        want[layer][static_cast<size_t>(((b * H + h) * S + at) * D + d)] =
            static_cast<float>(fresh.item_as_double({b, h, t, d}));
  };

  cache.begin_step(4, {4, 2, 0});
  EXPECT_EQ(cache.step_lengths().to_float_vector(), (std::vector<float>{4, 2, 0}));
  ASSERT_TRUE(cache.step_new_tokens().defined());
  for (int64_t layer = 0; layer < 2; ++layer) {
    Tensor k = random_tensor({B, H, 4, D}, DType::f32, 10 + layer);
    auto [keys, values] = cache.update(layer, k, k);
    EXPECT_EQ(keys.size(2), 4);  // the longest row
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < std::vector<int64_t>{4, 2, 0}[b]; ++t) expect_rows(layer, k, b, t, t);
  }
  cache.end_step();
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{4, 2, 0}));
  EXPECT_EQ(cache.lengths().to_float_vector(), (std::vector<float>{4, 2, 0}));
  EXPECT_EQ(cache.seq_len(), 4);
  EXPECT_EQ(cache.seq_len(1), 2);
  EXPECT_EQ(cache.step_tokens(), 0);

  // The original API: update (a one-token step begins by itself), then advance.
  Tensor k1 = random_tensor({B, H, 1, D}, DType::f32, 20);
  cache.update(1, k1, k1);
  EXPECT_FALSE(cache.step_new_tokens().defined());
  for (int64_t b = 0; b < B; ++b) expect_rows(1, k1, b, 0, cache.row_lengths()[b]);
  cache.advance();
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{5, 3, 1}));
  cache.advance({0, 2, 1});
  EXPECT_EQ(cache.lengths().to_float_vector(), floats({5, 5, 2}));
  EXPECT_EQ(cache.seq_lens(1).to_float_vector(), (std::vector<float>{6, 6, 3}));
  EXPECT_TRUE(same_bits(cache.keys(0).to_float_vector(), want[0]));
  EXPECT_TRUE(same_bits(cache.keys(1).to_float_vector(), want[1]));
  EXPECT_TRUE(same_bits(cache.values(1).to_float_vector(), want[1]));

  // A step replayed on the device only (a CUDA graph) is read back into the mirror.
  ops::add_lengths(cache.lengths(), 1, {}, cache.lengths());
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{5, 5, 2}));
  cache.refresh_host_lengths();
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{6, 6, 3}));
  EXPECT_EQ(cache.seq_len(), 6);

  cache.reset();
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(cache.lengths().to_float_vector(), (std::vector<float>{0, 0, 0}));
}

TEST(KVCache, PerRowOverflowNamesTheRow) {
  const auto message = testing::error_message;
  KVCache cache({.num_layers = 1, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 6}, 3);
  cache.advance({1, 4, 2});
  std::string e = message([&] { cache.begin_step(3); });
  EXPECT_NE(e.find("row 1"), std::string::npos) << e;
  EXPECT_NE(e.find("max_seq_len=6"), std::string::npos) << e;
  EXPECT_EQ(cache.step_tokens(), 0);  // nothing begun
  cache.begin_step(3, {3, 2, 0});     // row 1 writes only 2 of the 3: it fits
  EXPECT_EQ(cache.step_seq_len(), 6);
  e = message([&] { cache.update(0, random_tensor({3, 2, 2, 64}, DType::f16, 1), random_tensor({3, 2, 2, 64}, DType::f16, 2)); });
  EXPECT_NE(e.find("step of 3"), std::string::npos) << e;
  cache.end_step();
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{4, 6, 2}));
  e = message([&] { cache.advance({0, 0, 5}); });
  EXPECT_NE(e.find("row 2"), std::string::npos) << e;
  EXPECT_NE(message([&] { cache.advance({1, 1}); }).find("3 rows"), std::string::npos);
  EXPECT_NE(message([&] { cache.begin_step(2, {3, 0, 0}); }).find("row 0"), std::string::npos);
  EXPECT_NE(message([&] { cache.begin_step(1, {0, 0, -1}); }).find("row 2"), std::string::npos);
  EXPECT_NE(message([&] { cache.end_step(); }).find("no step"), std::string::npos);
  EXPECT_NE(message([&] { cache.seq_len(3); }).find("row=3"), std::string::npos);
  EXPECT_EQ(cache.row_lengths(), (std::vector<int64_t>{4, 6, 2}));  // failed calls change nothing
}

}  // namespace
}  // namespace marlin
