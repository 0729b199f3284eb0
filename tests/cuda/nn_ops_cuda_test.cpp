// GPU-only: every nn building-block op on CUDA against its CPU reference over many shapes,
// outputs poisoned so an unwritten element shows as NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <tuple>

#include "cuda/cuda_test.h"
#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class NnCuda : public testing::CudaTest {};

const DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};
// CPU and CUDA differ only in the order of f32 sums and in FMA use: an ulp of the dtype here
// and there.
double tol(DType t) { return t == DType::f32 ? 2e-6 : t == DType::f16 ? 1e-3 : 6e-3; }
// Per element, relative to the largest |reference|: two roundings of the dtype may flip by an ulp
// each. A misplaced or unwritten vector shows as an error of order one.
double elem_tol(DType t) { return t == DType::f32 ? 1e-5 : t == DType::f16 ? 4e-3 : 2e-2; }

// max |got - ref| / max |ref|; NaN anywhere (an unwritten, poisoned element) gives infinity.
double max_error(const std::vector<double>& got, const std::vector<double>& ref) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    worst = std::max(worst, std::abs(got[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return worst / scale;
}

// Norm-wise, against float64: the CPU tests' bounds (a couple of roundings to the dtype).
double ref_tol(DType t) { return t == DType::f32 ? 2e-6 : t == DType::f16 ? 2e-3 : 1.2e-2; }

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

// Decode-sized rows through every variant of the vectorized kernel (1, 2 and 4 vectors a thread,
// rows of one vector) and the general kernel (n not whole vectors, or too long), one and several
// rows, weights of the activation dtype and of another one (8- and 32-byte weight vectors).
TEST_F(NnCuda, NormsDecodeShapesMatchCpuAndFloat64) {
  testing::PoisonScope poison;
  const double eps = 1e-5;
  int seed = 1000;
  for (DType dt : kDtypes)
    for (int64_t n : {8, 100, 4096, 4104, 5120, 14336, 16384, 32768, 40000})
      for (int64_t rows : {1, 3, 17}) {
        const DType wt = seed % 3 == 0 ? DType::f32 : seed % 3 == 1 ? dt : DType::bf16;
        const Tensor x = random_tensor({rows, n}, dt, ++seed, 3.0f), w = random_tensor({n}, wt, ++seed);
        const Tensor res = random_tensor({rows, n}, dt, ++seed);
        const std::string what = std::string(dtype_name(dt)) + " weight " + std::string(dtype_name(wt)) +
                                 " rows=" + std::to_string(rows) + " n=" + std::to_string(n);
        const Tensor wg = w.to(gpu);
        const auto got = to_double(ops::rms_norm(x.to(gpu), wg, eps));
        EXPECT_LT(max_error(got, to_double(ops::rms_norm(x, w, eps))), elem_tol(dt)) << what;
        EXPECT_LT(relative_error(got, testing::reference_rms_norm(to_double(x), to_double(w), n, eps)), ref_tol(dt)) << what;
        Tensor res_cpu = res.clone(), res_gpu = res.to(gpu);
        const auto y_gpu = to_double(ops::add_rms_norm(res_gpu, x.to(gpu), wg, eps));
        const auto y = to_double(ops::add_rms_norm(res_cpu, x, w, eps));
        EXPECT_EQ(res_gpu.to_float_vector(), res_cpu.to_float_vector()) << what;
        EXPECT_LT(max_error(y_gpu, y), elem_tol(dt)) << what;
        EXPECT_LT(relative_error(y_gpu, testing::reference_rms_norm(to_double(res_cpu), to_double(w), n, eps)), ref_tol(dt))
            << what;
      }
}

// Rows inside wider buffers: 16-byte aligned starts and strides keep the vectorized kernel, an
// odd start falls back, and so does a stride of n + 4 for 16-bit dtypes (half a vector); in place
// (out == x, and add_rms_norm's out == x) on both.
TEST_F(NnCuda, NormsStridedAndInPlaceMatchCpu) {
  testing::PoisonScope poison;
  const int64_t rows = 5, n = 4096;
  int seed = 2000;
  for (DType dt : kDtypes) {
    const Tensor w = random_tensor({n}, dt, ++seed);
    const Tensor wg = w.to(gpu);
    // (buffer width, column start): aligned; odd start; stride of n + 4 elements.
    for (auto [width, start] : {std::pair<int64_t, int64_t>{n + 16, 8}, {n + 16, 1}, {n + 4, 0}}) {
      const std::string what = std::string(dtype_name(dt)) + " width=" + std::to_string(width) +
                               " start=" + std::to_string(start);
      const Tensor xb = random_tensor({rows, width}, dt, ++seed, 2.0f);
      const Tensor rb = random_tensor({rows, width}, dt, ++seed);
      const Tensor xg = xb.to(gpu), rg = rb.to(gpu), xc = xb.clone(), rc = rb.clone();
      const Tensor xgn = xg.narrow(1, start, n), xcn = xc.narrow(1, start, n);
      // Out of place from the strided rows, then in place (the columns around stay as they were).
      EXPECT_LT(max_error(to_double(ops::rms_norm(xgn, wg, 1e-6)), to_double(ops::rms_norm(xcn, w, 1e-6))),
                elem_tol(dt)) << what;
      ops::rms_norm(xgn, wg, 1e-6, xgn);
      ops::rms_norm(xcn, w, 1e-6, xcn);
      EXPECT_LT(max_error(to_double(xg), to_double(xc)), elem_tol(dt)) << what << " in place";
      // The residual strided too; the output written over x.
      const Tensor x2 = random_tensor({rows, n}, dt, ++seed);
      const Tensor x2g = x2.to(gpu), x2c = x2.clone();
      ops::add_rms_norm(rg.narrow(1, start, n), x2g, wg, 1e-6, x2g);
      ops::add_rms_norm(rc.narrow(1, start, n), x2c, w, 1e-6, x2c);
      EXPECT_EQ(rg.to_float_vector(), rc.to_float_vector()) << what;
      EXPECT_LT(max_error(to_double(x2g), to_double(x2c)), elem_tol(dt)) << what << " add in place";
    }
  }
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

// Llama-3.1-8B decode shapes: q and k heads as slices of one fused QKV output [T, 32 + 8 + 8, 128]
// (the v heads must stay untouched), full and partial rotary, both layouts, one and seven tokens,
// positions past sincosf's fast range.
TEST_F(NnCuda, RopeDecodeShapesMatchCpu) {
  testing::PoisonScope poison;
  int cases = 0;
  for (int64_t T : {1, 7})
    for (int64_t rotary : {128, 64})
      for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved})
        for (DType dt : kDtypes) {
          RopeScaling s;
          s.type = RopeType::llama3;
          s.factor = 8;
          s.original_max_position_embeddings = 8192;
          const ops::RopeParams p = ops::rope_params(500000, rotary, s, 131072, layout);
          std::vector<int32_t> pos(static_cast<size_t>(T));
          for (int64_t t = 0; t < T; ++t)
            pos[static_cast<size_t>(t)] = static_cast<int32_t>((t * 40009 + cases * 7) % 131072);
          const Tensor positions = Tensor::from_vector(pos, {T}, DType::i32);
          const Tensor qkv = random_tensor({T, 48, 128}, dt, 3000 + cases);
          Tensor cpu = qkv.clone(), g = qkv.to(gpu);
          ops::rope(cpu.narrow(1, 0, 32), cpu.narrow(1, 32, 8), positions, p);
          ops::rope(g.narrow(1, 0, 32), g.narrow(1, 32, 8), positions.to(gpu), p.to(gpu));
          const std::vector<double> got = to_double(g), want = to_double(cpu);
          EXPECT_LT(max_error(got, want), elem_tol(dt))
              << "T=" << T << " rotary=" << rotary << " " << dtype_name(dt)
              << " interleaved=" << (layout == ops::RopeLayout::interleaved);
          EXPECT_EQ(to_double(g.narrow(1, 40, 8)), to_double(qkv.narrow(1, 40, 8))) << "v heads changed";
          ++cases;
        }
  EXPECT_EQ(cases, 24);
  // Head counts that leave a block's warps idle, and more (token, head) items than the grid has
  // warps, so that warps take several items (and reuse their stage).
  for (auto [T, Hq, Hk] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 2}, {70000, 4, 0}})
    for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved}) {
      const ops::RopeParams p = ops::rope_params(10000, 64, RopeScaling{}, 0, layout);
      std::vector<int32_t> pos(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(t);
      const Tensor positions = Tensor::from_vector(pos, {T}, DType::i32);
      Tensor q = random_tensor({T, Hq, 64}, DType::bf16, 4000 + T);
      Tensor k = random_tensor({T, Hk, 64}, DType::bf16, 4001);
      Tensor qg = q.to(gpu), kg = k.to(gpu);
      if (Hk) {
        ops::rope(q, k, positions, p);
        ops::rope(qg, kg, positions.to(gpu), p.to(gpu));
        EXPECT_LT(max_error(to_double(kg), to_double(k)), elem_tol(DType::bf16)) << "k T=" << T;
      } else {
        ops::rope(q, positions, p);
        ops::rope(qg, positions.to(gpu), p.to(gpu));
      }
      EXPECT_LT(max_error(to_double(qg), to_double(q)), elem_tol(DType::bf16)) << "q T=" << T;
    }
}

// SwiGLU at decode sizes: the fused gate_up of Llama-3.1-8B (14336) through the vectorized
// kernel, intermediate sizes not whole vectors through the general one, and in place (out == gate).
TEST_F(NnCuda, SiluMulDecodeShapesMatchCpu) {
  testing::PoisonScope poison;
  int seed = 5000;
  for (DType dt : kDtypes)
    for (int64_t inter : {14336, 4100, 4097, 12})
      for (int64_t rows : {1, 3, 17}) {
        const Tensor gu = random_tensor({rows, 2 * inter}, dt, ++seed, 2.0f);
        const std::string what = std::string(dtype_name(dt)) + " rows=" + std::to_string(rows) +
                                 " inter=" + std::to_string(inter);
        EXPECT_LT(max_error(to_double(ops::silu_mul(gu.to(gpu))), to_double(ops::silu_mul(gu))), elem_tol(dt))
            << what;
        Tensor g = random_tensor({rows, inter}, dt, ++seed, 2.0f);
        const Tensor u = random_tensor({rows, inter}, dt, ++seed);
        Tensor gg = g.to(gpu);
        ops::silu_mul(gg, u.to(gpu), gg);
        ops::silu_mul(g, u, g);
        EXPECT_LT(max_error(to_double(gg), to_double(g)), elem_tol(dt)) << what << " in place";
      }
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
  // Decode: one token of a 4096-wide table (vectorized copy over several blocks), and widths
  // that are not whole 16-byte vectors for some dtypes (the general kernel).
  for (DType dt : kDtypes)
    for (int64_t hidden : {4096, 100, 4100}) {
      Tensor table = random_tensor({300, hidden}, dt, 52);
      for (const auto& ids : {std::vector<int32_t>{299}, std::vector<int32_t>{0, 17, 299, 5, 17}}) {
        const Tensor id = Tensor::from_vector(ids, {static_cast<int64_t>(ids.size())}, DType::i32);
        EXPECT_EQ(ops::embedding(id.to(gpu), table.to(gpu)).to_float_vector(),
                  ops::embedding(id, table).to_float_vector())
            << dtype_name(dt) << " hidden=" << hidden << " tokens=" << ids.size();
      }
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
