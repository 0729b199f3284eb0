// The nn building-block ops on the CPU against float64 references written here, over many
// shapes (odd sizes, strided rows, every head_dim of the supported models), and their errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};

// Norm-wise tolerance of one op with a couple of roundings to the dtype.
double tol(DType t) { return t == DType::f32 ? 2e-6 : t == DType::f16 ? 2e-3 : 1.2e-2; }

template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(NnNorm, RmsNormMatchesFloat64) {
  const Shape shapes[] = {{1, 64}, {3, 7}, {5, 4096}, {17, 1000}, {2, 3, 128}, {1, 1}, {33, 257}};
  int seed = 0;
  for (DType dt : kDtypes)
    for (const Shape& s : shapes) {
      Tensor x = random_tensor(s, dt, ++seed, 3.0f);
      Tensor w = random_tensor({s.back()}, dt, ++seed);
      const Tensor y = ops::rms_norm(x, w, 1e-6);
      EXPECT_EQ(y.shape(), s);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_LT(relative_error(to_double(y), testing::reference_rms_norm(to_double(x), to_double(w), s.back(), 1e-6)), tol(dt))
          << dtype_name(dt) << shape_str(s);
    }
}

TEST(NnNorm, RmsNormRoundsLikeTransformers) {
  // bf16: weight * normalized.to(bf16), both factors exact bf16 values, one final rounding.
  Tensor x = random_tensor({4, 96}, DType::bf16, 5);
  Tensor w = random_tensor({96}, DType::bf16, 6);
  const auto got = ops::rms_norm(x, w, 1e-5).to_float_vector();
  const auto xv = x.to_float_vector(), wv = w.to_float_vector();
  for (int r = 0; r < 4; ++r) {
    float ss = 0;
    for (int j = 0; j < 96; ++j) ss += xv[r * 96 + j] * xv[r * 96 + j];
    const float inv = 1.0f / std::sqrt(ss / 96.0f + 1e-5f);
    for (int j = 0; j < 96; ++j) {
      const float normed = bf16_bits_to_float(float_to_bf16_bits(xv[r * 96 + j] * inv));
      const float want = bf16_bits_to_float(float_to_bf16_bits(wv[j] * normed));
      // One bf16 ulp of slack for the order of the f32 sum of squares.
      EXPECT_NEAR(got[r * 96 + j], want, std::fabs(want) * 1.0 / 128) << r << "," << j;
    }
  }
}

TEST(NnNorm, StridedRowsAndInPlace) {
  // q of a fused QKV output [tokens, (Hq + 2 Hkv) * D] viewed per head: rows are strided.
  Tensor qkv = random_tensor({5, (4 + 2 * 2) * 64}, DType::bf16, 9);
  Tensor q3 = qkv.view({5, 8, 64}).narrow(1, 0, 4);
  Tensor w = random_tensor({64}, DType::bf16, 10);
  const auto want = ops::rms_norm(q3.contiguous(), w, 1e-6).to_float_vector();
  const auto rest = qkv.view({5, 8, 64}).narrow(1, 4, 4).contiguous().to_float_vector();
  ops::rms_norm(q3, w, 1e-6, q3);  // in place
  EXPECT_EQ(q3.contiguous().to_float_vector(), want);
  EXPECT_EQ(qkv.view({5, 8, 64}).narrow(1, 4, 4).contiguous().to_float_vector(), rest);
}

TEST(NnNorm, AddRmsNormUpdatesResidual) {
  for (DType dt : kDtypes)
    for (const Shape& s : {Shape{1, 2048}, Shape{7, 333}, Shape{64, 128}}) {
      Tensor res = random_tensor(s, dt, 20, 2.0f), x = random_tensor(s, dt, 21);
      Tensor w = random_tensor({s.back()}, dt, 22);
      const Tensor sum = ops::add(res, x);
      const Tensor want = ops::rms_norm(sum, w, 1e-5);
      const Tensor y = ops::add_rms_norm(res, x, w, 1e-5);
      EXPECT_EQ(res.to_float_vector(), sum.to_float_vector()) << dtype_name(dt);
      EXPECT_EQ(y.to_float_vector(), want.to_float_vector()) << dtype_name(dt);
    }
}

// rotate in float64 from the same f32 angle: the reference of both layouts.
std::vector<double> ref_rope(const Tensor& x, const std::vector<int32_t>& pos, const ops::RopeParams& p) {
  std::vector<double> v = to_double(x);
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = p.rotary_dim() / 2;
  const auto inv = p.inv_freq.to_float_vector();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double* row = v.data() + (t * H + h) * D;
      std::vector<double> in(row, row + 2 * half);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<float>(pos[t]) * inv[i];
        const double c = std::cos(angle) * p.attention_factor, s = std::sin(angle) * p.attention_factor;
        const bool il = p.layout == ops::RopeLayout::interleaved;
        const double a = il ? in[2 * i] : in[i], b = il ? in[2 * i + 1] : in[i + half];
        row[i] = a * c - b * s;
        row[i + half] = b * c + a * s;
      }
    }
  return v;
}

TEST(NnRope, MatchesFloat64AllHeadDimsAndLayouts) {
  std::mt19937 rng(3);
  int cases = 0;
  for (int64_t D : {64, 80, 96, 128, 256})
    for (int64_t rotary : {D, D / 2})
      for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved})
        for (DType dt : kDtypes) {
          RopeScaling yarn;
          yarn.type = RopeType::yarn;
          yarn.factor = 4.0;
          yarn.original_max_position_embeddings = 4096;
          const ops::RopeParams p = ops::rope_params(1e6, rotary, cases % 3 ? RopeScaling{} : yarn, 16384, layout);
          const int64_t T = 1 + rng() % 9, Hq = 1 + rng() % 6, Hk = 1 + rng() % 3;
          std::vector<int32_t> pos(T);
          for (auto& v : pos) v = static_cast<int32_t>(rng() % 140000);
          Tensor q = random_tensor({T, Hq, D}, dt, 100 + cases), k = random_tensor({T, Hk, D}, dt, 200 + cases);
          const auto q_ref = ref_rope(q, pos, p), k_ref = ref_rope(k, pos, p);
          const auto q_tail = q.narrow(2, rotary, D - rotary).contiguous().to_float_vector();
          ops::rope(q, k, Tensor::from_vector(pos, {T}, DType::i32), p);
          const double t = dt == DType::f32 ? 1e-5 : tol(dt);
          EXPECT_LT(relative_error(to_double(q), q_ref), t) << "D=" << D << " rotary=" << rotary << " " << dtype_name(dt);
          EXPECT_LT(relative_error(to_double(k), k_ref), t) << "D=" << D << " rotary=" << rotary << " " << dtype_name(dt);
          EXPECT_EQ(q.narrow(2, rotary, D - rotary).contiguous().to_float_vector(), q_tail);  // untouched
          ++cases;
        }
  EXPECT_EQ(cases, 60);
}

TEST(NnRope, MlaRotaryPartIsAStridedView) {
  // DeepSeek/GLM: q [T, H, nope + rope], only the last qk_rope dims rotate.
  const ops::RopeParams p = ops::rope_params(1e6, 64, RopeScaling{}, 202752, ops::RopeLayout::interleaved);
  Tensor q = random_tensor({3, 4, 192 + 64}, DType::bf16, 7);
  Tensor rot = q.narrow(2, 192, 64).contiguous();
  const std::vector<int32_t> pos{5, 6, 7};
  const Tensor positions = Tensor::from_vector(pos, {3}, DType::i32);
  ops::rope(rot, positions, p);
  ops::rope(q.narrow(2, 192, 64), positions, p);
  EXPECT_EQ(q.narrow(2, 192, 64).contiguous().to_float_vector(), rot.to_float_vector());
}

TEST(NnRope, ParamsFromRealConfigs) {
  const std::string dir = std::string(MARLIN_SOURCE_DIR) + "/bench/configs/";
  for (const char* name : {"llama-3.1-8b.json", "llama-3.2-1b.json", "qwen3-8b.json", "glm-4.7-flash.json"}) {
    const ModelConfig c = load_model_config(dir + name);
    const ops::RopeParams p = ops::rope_params(c);
    EXPECT_EQ(p.rotary_dim(), c.rotary_dim) << name;
    const auto f = p.inv_freq.to_float_vector();
    EXPECT_EQ(f[0], 1.0f) << name;
    for (size_t i = 1; i < f.size(); ++i) EXPECT_LT(f[i], f[i - 1]) << name << " " << i;
    if (c.rope_scaling.type == RopeType::llama3) {
      // High frequencies unchanged, low ones divided by factor.
      RopeScaling none;
      const auto base = ops::rope_params(c.rope_theta, c.rotary_dim, none, 0, ops::RopeLayout::half_split)
                            .inv_freq.to_float_vector();
      EXPECT_EQ(f[1], base[1]) << name;
      EXPECT_FLOAT_EQ(f.back(), base.back() / static_cast<float>(c.rope_scaling.factor)) << name;
    }
    EXPECT_EQ(p.layout == ops::RopeLayout::interleaved, c.mla.has_value()) << name;
  }
  RopeScaling ds;
  ds.type = RopeType::yarn;
  ds.factor = 40;
  ds.mscale = 1.0;
  ds.mscale_all_dim = 1.0;
  const auto p = ops::rope_params(10000, 64, ds, 163840, ops::RopeLayout::interleaved, true);
  EXPECT_FLOAT_EQ(p.attention_factor, 1.0f);  // mscale / mscale_all_dim
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(p.softmax_scale_factor, m * m, 1e-12);
  ds.mscale.reset();
  EXPECT_FLOAT_EQ(ops::rope_params(10000, 64, ds, 163840, ops::RopeLayout::half_split).attention_factor,
                  static_cast<float>(m));
}

std::vector<double> ref_silu_mul(const std::vector<double>& g, const std::vector<double>& u) {
  std::vector<double> y(g.size());
  for (size_t i = 0; i < g.size(); ++i) y[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  return y;
}

TEST(NnActivation, SiluMulFusedAndSeparate) {
  for (DType dt : kDtypes)
    for (const Shape& s : {Shape{1, 11008}, Shape{3, 17}, Shape{9, 1536}, Shape{2, 2, 96}}) {
      Shape fused = s;
      fused.back() *= 2;
      Tensor gu = random_tensor(fused, dt, 30, 2.0f);
      const int64_t last = static_cast<int64_t>(s.size()) - 1, I = s.back();
      const Tensor g = gu.narrow(last, 0, I).contiguous(), u = gu.narrow(last, I, I).contiguous();
      const Tensor y = ops::silu_mul(gu);
      EXPECT_EQ(y.shape(), s);
      EXPECT_LT(relative_error(to_double(y), ref_silu_mul(to_double(g), to_double(u))), tol(dt)) << dtype_name(dt);
      EXPECT_EQ(ops::silu_mul(g, u).to_float_vector(), y.to_float_vector());
    }
}

TEST(NnActivation, AddAndSoftmax) {
  for (DType dt : kDtypes) {
    Tensor a = random_tensor({7, 301}, dt, 40), b = random_tensor({7, 301}, dt, 41);
    const auto av = to_double(a), bv = to_double(b);
    std::vector<double> sum(av.size());
    for (size_t i = 0; i < av.size(); ++i) sum[i] = av[i] + bv[i];
    EXPECT_LT(relative_error(to_double(ops::add(a, b)), sum), tol(dt) / 2);
    for (int64_t n : {1, 5, 1000, 151936}) {
      Tensor x = random_tensor({3, n}, dt, 50 + n, 4.0f);
      const Tensor p = ops::softmax_last_dim(x);
      EXPECT_EQ(p.dtype(), DType::f32);
      const auto xv = to_double(x);
      std::vector<double> ref(xv.size());
      for (int64_t r = 0; r < 3; ++r) {
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < n; ++j) m = std::max(m, xv[r * n + j]);
        for (int64_t j = 0; j < n; ++j) s += std::exp(xv[r * n + j] - m);
        for (int64_t j = 0; j < n; ++j) ref[r * n + j] = std::exp(xv[r * n + j] - m) / s;
      }
      EXPECT_LT(relative_error(to_double(p), ref), 1e-5) << n << " " << dtype_name(dt);
    }
  }
}

TEST(NnEmbedding, CopiesRowsAndNamesBadIds) {
  for (DType dt : kDtypes) {
    Tensor table = random_tensor({1000, 72}, dt, 60);
    const std::vector<int32_t> ids{0, 999, 5, 5, 123};
    const Tensor y = ops::embedding(Tensor::from_vector(ids, {5}, DType::i32), table);
    ASSERT_EQ(y.shape(), (Shape{5, 72}));
    for (size_t t = 0; t < ids.size(); ++t)
      EXPECT_EQ(y.select(0, static_cast<int64_t>(t)).to_float_vector(), table.select(0, ids[t]).to_float_vector());
  }
  Tensor table = random_tensor({1000, 8}, DType::f32, 61);
  expect_error([&] { ops::embedding(Tensor::from_vector(std::vector<int32_t>{3, 1000}, {2}, DType::i32), table); },
               {"[embedding]", "id 1000", "V=1000"});
  expect_error([&] { ops::embedding(Tensor::from_vector(std::vector<int32_t>{-2}, {1}, DType::i32), table); },
               {"id -2", "V=1000"});
}

TEST(NnErrors, NameTheOpAndShapes) {
  Tensor x = random_tensor({4, 64}, DType::f16, 1);
  expect_error([&] { ops::rms_norm(x, random_tensor({63}, DType::f16, 2), 1e-6); }, {"[rms_norm]", "[64]", "f16[63]"});
  expect_error([&] { ops::rms_norm(x.to(DType::f32).view_as(DType::i32), random_tensor({64}, DType::f16, 2), 1e-6); },
               {"[rms_norm]", "i32"});
  expect_error([&] { ops::add_rms_norm(random_tensor({4, 32}, DType::f16, 3), x, random_tensor({64}, DType::f16, 2), 1e-6); },
               {"[add_rms_norm]", "f16[4, 32]"});
  expect_error([&] { ops::silu_mul(random_tensor({2, 7}, DType::bf16, 4)); }, {"[silu_mul]", "even"});
  expect_error([&] { ops::add(x, random_tensor({4, 64}, DType::bf16, 5)); }, {"[add]", "bf16[4, 64]"});
  const ops::RopeParams p = ops::rope_params(10000, 128, RopeScaling{}, 0, ops::RopeLayout::half_split);
  const Tensor pos = Tensor::from_vector(std::vector<int32_t>{0, 1}, {2}, DType::i32);
  expect_error([&] { ops::rope(random_tensor({2, 4, 64}, DType::f16, 6), pos, p); }, {"[rope]", "rotary_dim=128"});
  expect_error([&] { ops::rope(random_tensor({3, 4, 128}, DType::f16, 6), pos, p); }, {"[rope]", "3 tokens"});
  expect_error([&] { ops::rope(random_tensor({2, 4, 128}, DType::f16, 6), pos.to(DType::f32), p); },
               {"[rope]", "i32"});
  expect_error([&] { ops::rope_params(10000, 63, RopeScaling{}, 0, ops::RopeLayout::half_split); },
               {"[rope_params]", "63"});
}

}  // namespace
}  // namespace marlin
