// GPU-only: every nn building-block op on CUDA against its CPU reference over many shapes,
// outputs poisoned so an unwritten element shows as NaN.
#include <gtest/gtest.h>

#include <random>

#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class NnCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  }
  const Device gpu = Device::cuda(0);
};

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};
// CPU and CUDA differ only in the order of f32 sums and in FMA use: an ulp of the dtype here
// and there.
double tol(DType t) { return t == DType::f32 ? 2e-6 : t == DType::f16 ? 1e-3 : 6e-3; }

TEST_F(NnCuda, NormsMatchCpu) {
  testing::PoisonScope poison;
  const Shape shapes[] = {{1, 64}, {3, 7}, {5, 4096}, {17, 1000}, {2, 3, 128}, {1, 1}, {300, 257}, {4, 8192}};
  int seed = 0;
  for (DType dt : kDtypes)
    for (const Shape& s : shapes) {
      Tensor x = random_tensor(s, dt, ++seed, 3.0f), w = random_tensor({s.back()}, dt, ++seed);
      Tensor res = random_tensor(s, dt, ++seed);
      EXPECT_LT(relative_error(to_double(ops::rms_norm(x.to(gpu), w.to(gpu), 1e-6)),
                               to_double(ops::rms_norm(x, w, 1e-6))), tol(dt))
          << dtype_name(dt) << shape_str(s);
      Tensor res_gpu = res.to(gpu);
      const Tensor y_gpu = ops::add_rms_norm(res_gpu, x.to(gpu), w.to(gpu), 1e-5);
      const Tensor y = ops::add_rms_norm(res, x, w, 1e-5);
      EXPECT_EQ(res_gpu.to_float_vector(), res.to_float_vector()) << dtype_name(dt) << shape_str(s);
      EXPECT_LT(relative_error(to_double(y_gpu), to_double(y)), tol(dt)) << dtype_name(dt) << shape_str(s);
    }
  // Strided rows (heads of a fused QKV output), in place, f32 weight for bf16 activations.
  Tensor qkv = random_tensor({7, 12, 128}, DType::bf16, 99);
  Tensor w = random_tensor({128}, DType::f32, 98);
  Tensor g = qkv.to(gpu);
  ops::rms_norm(g.narrow(1, 0, 8), w.to(gpu), 1e-6, g.narrow(1, 0, 8));
  ops::rms_norm(qkv.narrow(1, 0, 8), w, 1e-6, qkv.narrow(1, 0, 8));
  EXPECT_LT(relative_error(to_double(g), to_double(qkv)), tol(DType::bf16));
}

TEST_F(NnCuda, RopeMatchesCpu) {
  testing::PoisonScope poison;
  std::mt19937 rng(5);
  int cases = 0;
  for (int64_t D : {64, 80, 96, 128, 256})
    for (int64_t rotary : {D, D / 2})
      for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved})
        for (DType dt : kDtypes) {
          RopeScaling s;
          if (cases % 3 == 1) {
            s.type = RopeType::yarn;
            s.factor = 40;
            s.mscale = 1.0;
            s.mscale_all_dim = 0.8;
            s.original_max_position_embeddings = 4096;
          } else if (cases % 3 == 2) {
            s.type = RopeType::llama3;
            s.factor = 8;
            s.original_max_position_embeddings = 8192;
          }
          const ops::RopeParams p = ops::rope_params(500000, rotary, s, 131072, layout);
          const int64_t T = 1 + rng() % 300, Hq = 1 + rng() % 40, Hk = cases % 4 ? 1 + rng() % 8 : 0;
          std::vector<int32_t> pos(T);
          for (auto& v : pos) v = static_cast<int32_t>(rng() % 131072);
          const Tensor positions = Tensor::from_vector(pos, {T}, DType::i32);
          Tensor q = random_tensor({T, Hq, D}, dt, 10 + cases), k = random_tensor({T, Hk, D}, dt, 20 + cases);
          Tensor qg = q.to(gpu), kg = k.to(gpu);
          if (Hk) {
            ops::rope(q, k, positions, p);
            ops::rope(qg, kg, positions.to(gpu), p.to(gpu));
            EXPECT_LT(relative_error(to_double(kg), to_double(k)), tol(dt)) << "k D=" << D << " " << dtype_name(dt);
          } else {
            ops::rope(q, positions, p);
            ops::rope(qg, positions.to(gpu), p.to(gpu));
          }
          // cos/sin of angles up to 1.3e5 rad: CUDA's sincosf and glibc's agree to an ulp or two.
          const double t = dt == DType::f32 ? 2e-5 : tol(dt);
          EXPECT_LT(relative_error(to_double(qg), to_double(q)), t)
              << "D=" << D << " rotary=" << rotary << " T=" << T << " Hq=" << Hq << " " << dtype_name(dt);
          ++cases;
        }
  EXPECT_EQ(cases, 60);
  // MLA: the rotary part is a strided slice of q.
  const auto p = ops::rope_params(1e6, 64, RopeScaling{}, 202752, ops::RopeLayout::interleaved);
  Tensor q = random_tensor({9, 20, 256}, DType::bf16, 77);
  Tensor qg = q.to(gpu);
  const Tensor positions = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 100000}, {9}, DType::i32);
  ops::rope(q.narrow(2, 192, 64), positions, p);
  ops::rope(qg.narrow(2, 192, 64), positions.to(gpu), p.to(gpu));
  EXPECT_LT(relative_error(to_double(qg), to_double(q)), tol(DType::bf16));
}

TEST_F(NnCuda, ActivationsAddSoftmaxMatchCpu) {
  testing::PoisonScope poison;
  for (DType dt : kDtypes) {
    for (const Shape& s : {Shape{1, 22016}, Shape{3, 34}, Shape{70000, 6}, Shape{2, 5, 1536}}) {
      Tensor gu = random_tensor(s, dt, 30, 2.0f);
      EXPECT_LT(relative_error(to_double(ops::silu_mul(gu.to(gpu))), to_double(ops::silu_mul(gu))), tol(dt))
          << dtype_name(dt) << shape_str(s);
      Tensor b = random_tensor(s, dt, 31);
      EXPECT_EQ(ops::add(gu.to(gpu), b.to(gpu)).to_float_vector(), ops::add(gu, b).to_float_vector());
    }
    for (const Shape& s : {Shape{1, 151936}, Shape{4, 32000}, Shape{33, 5}, Shape{1000, 1}}) {
      Tensor x = random_tensor(s, dt, 40, 5.0f);
      EXPECT_LT(relative_error(to_double(ops::softmax_last_dim(x.to(gpu))), to_double(ops::softmax_last_dim(x))), 1e-5)
          << dtype_name(dt) << shape_str(s);
    }
  }
}

TEST_F(NnCuda, EmbeddingMatchesCpuAndNamesBadIds) {
  testing::PoisonScope poison;
  for (DType dt : kDtypes) {
    Tensor table = random_tensor({5000, 200}, dt, 50);
    std::vector<int32_t> ids(37);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % 5000);
    const Tensor id_cpu = Tensor::from_vector(ids, {37}, DType::i32);
    const auto want = ops::embedding(id_cpu, table).to_float_vector();
    const Tensor tg = table.to(gpu);
    EXPECT_EQ(ops::embedding(id_cpu, tg).to_float_vector(), want) << dtype_name(dt);
    EXPECT_EQ(ops::embedding(id_cpu.to(gpu), tg).to_float_vector(), want) << dtype_name(dt);
  }
  const Tensor tg = random_tensor({100, 8}, DType::f16, 51).to(gpu);
  for (bool on_gpu : {false, true}) {
    Tensor ids = Tensor::from_vector(std::vector<int32_t>{1, 2, 100, 3}, {4}, DType::i32);
    if (on_gpu) ids = ids.to(gpu);
    try {
      ops::embedding(ids, tg);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("id 100 at position 2"), std::string::npos) << m;
      EXPECT_NE(m.find("V=100"), std::string::npos) << m;
    }
  }
}

TEST_F(NnCuda, MixedDevicesAreErrors) {
  Tensor x = random_tensor({2, 64}, DType::f16, 1).to(gpu);
  EXPECT_THROW(ops::rms_norm(x, random_tensor({64}, DType::f16, 2), 1e-6), Error);
  const auto p = ops::rope_params(10000, 64, RopeScaling{}, 0, ops::RopeLayout::half_split);
  const Tensor pos = Tensor::from_vector(std::vector<int32_t>{0, 1}, {2}, DType::i32).to(gpu);
  try {
    ops::rope(x.view({2, 1, 64}), pos, p);  // inv_freq left on the CPU
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RopeParams::to"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace marlin
