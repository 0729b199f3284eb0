// GPU MLA attention and per-head products against the CPU kernels on the same strided operands:
// latent (absorbed) and expanded forms, GLM-4.7-Flash and DeepSeek head dims, forced and
// automatic split counts, long caches; outputs poisoned.
#include <gtest/gtest.h>

#include "cuda/cuda_test.h"
#include "kernels/cuda/mla_kernels_cuda.h"
#include "marlin/mla_ops.h"
#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "mla_reference.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::make_mla_case;
using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class MlaCuda : public testing::CudaTest {
 protected:
  void TearDown() override { cuda::set_mla_attention_splits(0); }
};

// Both sides read the same 16-bit inputs and accumulate in f32; only the output rounding and
// the summation order differ.
double tolerance(DType t) { return t == DType::f16 ? 1e-3 : 8e-3; }

TEST_F(MlaCuda, AttentionMatchesCpu) {
  testing::PoisonScope poison;
  struct Case {
    bool latent;
    int64_t B, T, H, S, Dn, Dr, Dv;
    std::vector<int> lens;
  };
  const Case cases[] = {
      {true, 1, 1, 20, 4096, 512, 64, 512, {3001}},  // GLM-4.7-Flash decode, long cache
      {true, 2, 1, 20, 300, 512, 64, 512, {1, 300}},
      {true, 1, 1, 128, 700, 512, 64, 512, {700}},   // DeepSeek-V3's 128 heads
      {true, 3, 4, 5, 90, 96, 16, 96, {4, 33, 90}},  // extend, 5 heads (one partial head group)
      {true, 1, 1, 3, 17, 40, 8, 40, {17}},
      {false, 1, 37, 20, 37, 192, 64, 256, {37}},    // GLM-4.7-Flash expanded prefill
      {false, 2, 19, 6, 19, 128, 64, 128, {19, 19}}, // DeepSeek expanded prefill
      {false, 1, 9, 3, 9, 48, 16, 80, {9}},
      {false, 1, 5, 2, 5, 256, 32, 256, {5}},
  };
  int seed = 11;
  for (const Case& c : cases)
    for (DType dt : {DType::bf16, DType::f16})
      for (int splits : {0, 1, 3, 64}) {  // 64: the most the in-kernel merge holds
        seed += 7;
        cuda::set_mla_attention_splits(splits);
        const auto cpu = make_mla_case(c.latent, c.B, c.T, c.H, c.S, c.Dn, c.Dr, c.Dv, c.lens, dt, seed);
        const auto dev = make_mla_case(c.latent, c.B, c.T, c.H, c.S, c.Dn, c.Dr, c.Dv, c.lens, dt, seed, gpu);
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dn + c.Dr));
        const Tensor ref = ops::mla_attention(cpu.q_nope, cpu.q_rope, cpu.k_nope, cpu.k_rope, cpu.v,
                                              cpu.seq_lens, scale);
        const Tensor got = ops::mla_attention(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v,
                                              dev.seq_lens, scale);
        ASSERT_EQ(got.device(), gpu);
        EXPECT_LT(relative_error(to_double(got), to_double(ref)), tolerance(dt))
            << (c.latent ? "latent" : "expanded") << " B=" << c.B << " T=" << c.T << " H=" << c.H
            << " S=" << c.S << " Dn=" << c.Dn << " Dv=" << c.Dv << " splits=" << splits << " "
            << dtype_name(dt);
      }
}

// One latent row for every head but values apart from it (not the absorbed form's k_nope == v):
// the kernel that reads k_nope and v separately, two keys a batch.
TEST_F(MlaCuda, SharedKeysWithSeparateValuesMatchCpu) {
  testing::PoisonScope poison;
  int seed = 301;
  for (int64_t D : {512, 96})
    for (int splits : {0, 1, 5}) {
      seed += 3;
      cuda::set_mla_attention_splits(splits);
      auto cpu = make_mla_case(true, 2, 1, 20, 300, D, 64, D, {300, 77}, DType::bf16, seed);
      auto dev = make_mla_case(true, 2, 1, 20, 300, D, 64, D, {300, 77}, DType::bf16, seed, gpu);
      cpu.v = random_tensor(cpu.k_nope.shape(), DType::bf16, seed + 100);
      dev.v = cpu.v.to(gpu);
      const float scale = 1.0f / std::sqrt(static_cast<float>(D + 64));
      const Tensor ref =
          ops::mla_attention(cpu.q_nope, cpu.q_rope, cpu.k_nope, cpu.k_rope, cpu.v, cpu.seq_lens, scale);
      const Tensor got =
          ops::mla_attention(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v, dev.seq_lens, scale);
      EXPECT_LT(relative_error(to_double(got), to_double(ref)), tolerance(DType::bf16))
          << "D=" << D << " splits=" << splits;
    }
}

// Right-padded rows (prompts of different lengths): the GPU places each row's real queries and
// its padding queries as the CPU does, latent and expanded, with forced and automatic splits.
TEST_F(MlaCuda, RightPaddedRowsMatchCpu) {
  testing::PoisonScope poison;
  struct Case {
    bool latent;
    int64_t T, H, S, Dn, Dr, Dv;
    std::vector<int> lens, news;
  };
  const Case cases[] = {
      {false, 12, 20, 12, 192, 64, 256, {3, 12, 7}, {3, 12, 7}},   // GLM-4.7-Flash padded prefill
      {false, 12, 6, 12, 128, 64, 128, {3, 12, 7}, {3, 12, 7}},    // DeepSeek padded prefill
      {true, 5, 20, 600, 512, 64, 512, {8, 600, 300}, {5, 2, 0}},  // padded extend over a cache
      {true, 4, 5, 40, 96, 16, 96, {1, 40, 4}, {1, 4, 4}},
  };
  int seed = 101;
  for (const Case& c : cases)
    for (DType dt : {DType::bf16, DType::f16})
      for (int splits : {0, 1, 3}) {
        seed += 7;
        cuda::set_mla_attention_splits(splits);
        const int64_t B = static_cast<int64_t>(c.lens.size());
        const auto cpu = make_mla_case(c.latent, B, c.T, c.H, c.S, c.Dn, c.Dr, c.Dv, c.lens, dt, seed);
        const auto dev = make_mla_case(c.latent, B, c.T, c.H, c.S, c.Dn, c.Dr, c.Dv, c.lens, dt, seed, gpu);
        const Tensor news = Tensor::from_vector(c.news, {B}, DType::i32);
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.Dn + c.Dr));
        const Tensor ref = ops::mla_attention(cpu.q_nope, cpu.q_rope, cpu.k_nope, cpu.k_rope, cpu.v,
                                              cpu.seq_lens, scale, news);
        const Tensor got = ops::mla_attention(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v,
                                              dev.seq_lens, scale, news.to(gpu));
        EXPECT_LT(relative_error(to_double(got), to_double(ref)), tolerance(dt))
            << (c.latent ? "latent" : "expanded") << " T=" << c.T << " H=" << c.H << " S=" << c.S
            << " splits=" << splits << " " << dtype_name(dt);
      }
}

// More (batch, position) rows than a launch's grid z holds (65535), right-padded to one real
// query over a row of one to three keys, so that the CPU reference stays short.
TEST_F(MlaCuda, RowsPastTheGridsLimitMatchCpu) {
  testing::PoisonScope poison;
  const int64_t B = 2, T = 33000, H = 2, S = T, Dn = 32, Dr = 16, Dv = 32;
  const std::vector<int> lens{1, 3};
  const auto cpu = make_mla_case(false, B, T, H, S, Dn, Dr, Dv, lens, DType::bf16, 77);
  const auto dev = make_mla_case(false, B, T, H, S, Dn, Dr, Dv, lens, DType::bf16, 77, gpu);
  const Tensor news = Tensor::from_vector(std::vector<int>{1, 2}, {B}, DType::i32);
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dn + Dr));
  for (int splits : {0, 1, 2}) {
    cuda::set_mla_attention_splits(splits);
    const Tensor ref = ops::mla_attention(cpu.q_nope, cpu.q_rope, cpu.k_nope, cpu.k_rope, cpu.v, cpu.seq_lens, scale, news);
    const Tensor got =
        ops::mla_attention(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v, dev.seq_lens, scale, news.to(gpu));
    EXPECT_LT(relative_error(to_double(got), to_double(ref)), tolerance(DType::bf16)) << "splits=" << splits;
  }
  cuda::set_mla_attention_splits(0);
}

// GLM's absorbed shapes, N off the 256-column tile, K off the 8-warp split, M across row blocks
// and past the vector kernel's 16 rows, N not a multiple of 8 (the general kernel).
TEST_F(MlaCuda, HeadMatmulMatchesCpu) {
  testing::PoisonScope poison;
  int seed = 5;
  for (const auto& [M, H, K, N] : std::vector<std::array<int64_t, 4>>{
           {1, 20, 192, 512}, {1, 20, 512, 256}, {6, 3, 37, 11}, {9, 128, 128, 512}, {2, 1, 512, 1},
           {5, 4, 100, 264}, {16, 3, 33, 8}, {17, 2, 64, 64}, {1, 2, 700, 40}, {1, 40, 700, 512}})
    for (DType dt : {DType::bf16, DType::f16}) {
      const Tensor wide = random_tensor({M, H, K + 3}, dt, ++seed), w = random_tensor({H, K, N}, dt, ++seed);
      const Tensor ref = ops::mla_head_matmul(wide.narrow(2, 0, K), w);
      const Tensor got = ops::mla_head_matmul(wide.to(gpu).narrow(2, 0, K), w.to(gpu));
      EXPECT_LT(relative_error(to_double(got), to_double(ref)), tolerance(dt))
          << "M=" << M << " H=" << H << " K=" << K << " N=" << N << " " << dtype_name(dt);
    }
}

TEST_F(MlaCuda, F32AndOversizedDimsAreClearErrors) {
  auto m = make_mla_case(true, 1, 1, 2, 4, 32, 16, 32, {4}, DType::f32, 1, gpu);
  EXPECT_NE(testing::error_message([&] {
              ops::mla_attention(m.q_nope, m.q_rope, m.k_nope, m.k_rope, m.v, m.seq_lens, 1.0f);
            }).find("CPU only"),
            std::string::npos);
  auto big = make_mla_case(true, 1, 1, 2, 4, 640, 16, 640, {4}, DType::bf16, 2, gpu);
  EXPECT_NE(testing::error_message([&] {
              ops::mla_attention(big.q_nope, big.q_rope, big.k_nope, big.k_rope, big.v, big.seq_lens, 1.0f);
            }).find("Dn=640"),
            std::string::npos);
}

// ops::mla_rope_cache_write (RoPE on q_rope and k_rope, the latent's RMSNorm and the cache
// write in one launch) against the CPU's separate ops: the rotated q_rope and k_rope, the cache
// rows written, and every other cache entry left bit for bit as it was (the cache starts random);
// GLM-4.7-Flash's latent (512 + 64) and a narrow one, both RoPE layouts, a step of one token and
// of three with per-row counts (a row writing nothing).
TEST_F(MlaCuda, RopeCacheWriteMatchesCpu) {
  const int64_t B = 2, heads = 3, S = 9;
  const std::vector<int32_t> starts{0, 5};
  int seed = 700;
  for (const auto& [R, Dr] : {std::pair<int64_t, int64_t>{512, 64}, {96, 32}})
    for (int64_t T : {1, 3})
      for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved}) {
        ++seed;
        const DType dt = seed % 3 == 0 ? DType::f32 : seed % 3 == 1 ? DType::bf16 : DType::f16;
        const int64_t L = R + Dr, tokens = B * T;
        const ops::RopeParams p = ops::rope_params(10000, Dr, RopeScaling{}, 4096, layout);
        std::vector<int32_t> pos;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = 0; t < T; ++t) pos.push_back(starts[static_cast<size_t>(b)] + static_cast<int32_t>(t) + 7);
        const std::vector<int32_t> count_values{static_cast<int32_t>(T), 0};
        const Tensor positions = Tensor::from_vector(pos, {tokens}, DType::i32);
        const Tensor st = Tensor::from_vector(starts, {B}, DType::i32);
        const Tensor counts = T > 1 ? Tensor::from_vector(count_values, {B}, DType::i32) : Tensor();
        const Tensor q0 = random_tensor({tokens, heads, 16 + Dr}, dt, seed);  // [nope | rope] per head
        const Tensor ckv0 = random_tensor({tokens, 1, L}, dt, seed + 1);
        const Tensor cache0 = random_tensor({B, 1, S, L}, dt, seed + 2);
        const Tensor weight = random_tensor({R}, dt, seed + 3);
        auto run = [&](Device d, Tensor& q, Tensor& ckv, Tensor& cache) {
          q = q0.to(d).clone();
          ckv = ckv0.to(d).clone();
          cache = cache0.to(d).clone();
          ops::mla_rope_cache_write(q.narrow(2, 16, Dr), ckv.narrow(2, R, Dr), ckv.narrow(2, 0, R), positions.to(d),
                                    p.to(d), weight.to(d), 1e-6, cache, st.to(d),
                                    counts.defined() ? counts.to(d) : Tensor());
        };
        Tensor q_cpu, ckv_cpu, cache_cpu, q_gpu, ckv_gpu, cache_gpu;
        run(Device::cpu(), q_cpu, ckv_cpu, cache_cpu);
        run(gpu, q_gpu, ckv_gpu, cache_gpu);
        const std::string what = "R=" + std::to_string(R) + " T=" + std::to_string(T) + " " + std::string(dtype_name(dt));
        // cos/sin of the same f32 angles: CUDA's sincosf and glibc's agree to an ulp or two; the
        // norm's sum of squares is taken in another order.
        EXPECT_LT(relative_error(to_double(q_gpu), to_double(q_cpu)), 1e-2) << what;
        EXPECT_LT(relative_error(to_double(ckv_gpu), to_double(ckv_cpu)), 1e-2) << what;
        EXPECT_EQ(ckv_gpu.narrow(2, 0, R).contiguous().to_float_vector(), ckv0.narrow(2, 0, R).contiguous().to_float_vector())
            << what;  // the latent itself is left as it was
        EXPECT_LT(relative_error(to_double(cache_gpu), to_double(cache_cpu)), 1e-2) << what;
        const std::vector<float> got = cache_gpu.to_float_vector(), before = cache0.to_float_vector();
        for (int64_t b = 0; b < B; ++b)
          for (int64_t s = 0; s < S; ++s) {
            const int64_t written = counts.defined() ? count_values[static_cast<size_t>(b)] : T;
            if (s >= starts[static_cast<size_t>(b)] && s < starts[static_cast<size_t>(b)] + written) continue;
            for (int64_t i = 0; i < L; ++i) {
              const size_t at = static_cast<size_t>((b * S + s) * L + i);
              ASSERT_EQ(got[at], before[at]) << what << " b=" << b << " s=" << s << " i=" << i;
            }
          }
      }
}

// The absorbed decode's W_UK product with the step's RoPE and cache write beside it in one launch
// (ops::mla_rope_cache_write_head_matmul) against the two ops apart, on the GPU, bit for bit:
// the product, the rotated q_rope and k_rope, the whole cache. GLM-4.7-Flash's shapes and a
// narrow latent, both RoPE layouts, one token a row and (past the product kernel's 16 rows, the
// fallback to the two ops) nine with per-row counts.
TEST_F(MlaCuda, RopeCacheWriteBesideHeadMatmulIsBothApart) {
  const int64_t B = 2, heads = 20, Dn = 192, S = 40;
  const std::vector<int32_t> starts{0, 5};
  int seed = 900;
  for (const auto& [R, Dr] : {std::pair<int64_t, int64_t>{512, 64}, {96, 32}})
    for (int64_t T : {1, 9})
      for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved}) {
        ++seed;
        const DType dt = seed % 2 == 0 ? DType::bf16 : DType::f16;
        const int64_t L = R + Dr, tokens = B * T;
        const ops::RopeParams p = ops::rope_params(10000, Dr, RopeScaling{}, 4096, layout).to(gpu);
        std::vector<int32_t> pos;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = 0; t < T; ++t) pos.push_back(starts[static_cast<size_t>(b)] + static_cast<int32_t>(t) + 7);
        const std::vector<int32_t> count_values{static_cast<int32_t>(T), 2};
        const Tensor positions = Tensor::from_vector(pos, {tokens}, DType::i32).to(gpu);
        const Tensor st = Tensor::from_vector(starts, {B}, DType::i32).to(gpu);
        const Tensor counts = T > 1 ? Tensor::from_vector(count_values, {B}, DType::i32).to(gpu) : Tensor();
        const Tensor q0 = random_tensor({tokens, heads, Dn + Dr}, dt, seed).to(gpu);
        const Tensor ckv0 = random_tensor({tokens, 1, L}, dt, seed + 1).to(gpu);
        const Tensor cache0 = random_tensor({B, 1, S, L}, dt, seed + 2).to(gpu);
        const Tensor weight = random_tensor({R}, dt, seed + 3).to(gpu);
        const Tensor w_uk = random_tensor({heads, Dn, R}, dt, seed + 4).to(gpu);
        auto run = [&](bool together, Tensor& q, Tensor& ckv, Tensor& cache) {
          q = q0.clone();
          ckv = ckv0.clone();
          cache = cache0.clone();
          const Tensor q_rope = q.narrow(2, Dn, Dr), q_nope = q.narrow(2, 0, Dn);
          if (together)
            return ops::mla_rope_cache_write_head_matmul(q_rope, ckv.narrow(2, R, Dr), ckv.narrow(2, 0, R), positions,
                                                         p, weight, 1e-6, cache, st, counts, q_nope, w_uk);
          ops::mla_rope_cache_write(q_rope, ckv.narrow(2, R, Dr), ckv.narrow(2, 0, R), positions, p, weight, 1e-6,
                                    cache, st, counts);
          return ops::mla_head_matmul(q_nope, w_uk);
        };
        Tensor q_a, ckv_a, cache_a, q_b, ckv_b, cache_b;
        const Tensor apart = run(false, q_a, ckv_a, cache_a);
        const Tensor together = run(true, q_b, ckv_b, cache_b);
        const std::string what = "R=" + std::to_string(R) + " T=" + std::to_string(T) + " " + std::string(dtype_name(dt));
        ASSERT_EQ(together.shape(), apart.shape()) << what;
        EXPECT_EQ(together.to_float_vector(), apart.to_float_vector()) << what;
        EXPECT_EQ(q_b.to_float_vector(), q_a.to_float_vector()) << what;
        EXPECT_EQ(ckv_b.to_float_vector(), ckv_a.to_float_vector()) << what;
        EXPECT_EQ(cache_b.to_float_vector(), cache_a.to_float_vector()) << what;
        // The rotation happened (not two runs that both skipped it).
        EXPECT_NE(q_b.to_float_vector(), q0.to_float_vector()) << what;
      }
}

// The absorbed decode's attention and W_UV product with the product's launch merging the
// attention's splits (ops::mla_attention_head_matmul) against the two ops apart on the GPU, bit
// for bit, and against the CPU within rounding: split counts from one to the most the merge
// holds; one token (the product's one-row blocks), rows across its 4-row blocks, extend rows
// (T > 1) and past its 16 rows (where the two ops run); GLM-4.7-Flash's latent and narrow ones
// (the kernel with separate k and v registers at D = 96); product widths off its 64-column
// blocks. Outputs poisoned.
TEST_F(MlaCuda, AttentionThenHeadMatmulIsBothApart) {
  testing::PoisonScope poison;
  struct Case {
    int64_t B, T, H, S, D, Dr, N;
    std::vector<int> lens;
  };
  std::vector<int> many(17);
  for (size_t i = 0; i < many.size(); ++i) many[i] = 5 + 2 * static_cast<int>(i);
  const Case cases[] = {
      {1, 1, 20, 640, 512, 64, 256, {600}},  // GLM-4.7-Flash decode
      {6, 1, 20, 300, 512, 64, 256, {1, 300, 77, 150, 2, 299}},
      {2, 3, 5, 90, 96, 16, 40, {4, 90}},
      {1, 1, 3, 17, 40, 8, 24, {17}},
      {17, 1, 2, 40, 64, 16, 64, many},
  };
  int seed = 1200;
  for (const Case& c : cases)
    for (DType dt : {DType::bf16, DType::f16})
      for (int splits : {0, 1, 3, 20, 64}) {
        seed += 5;
        cuda::set_mla_attention_splits(splits);
        const auto cpu = make_mla_case(true, c.B, c.T, c.H, c.S, c.D, c.Dr, c.D, c.lens, dt, seed);
        const auto dev = make_mla_case(true, c.B, c.T, c.H, c.S, c.D, c.Dr, c.D, c.lens, dt, seed, gpu);
        const Tensor w = random_tensor({c.H, c.D, c.N}, dt, seed + 3);
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.D + c.Dr));
        const Tensor fused = ops::mla_attention_head_matmul(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v,
                                                            dev.seq_lens, scale, w.to(gpu));
        const Tensor attended =
            ops::mla_attention(dev.q_nope, dev.q_rope, dev.k_nope, dev.k_rope, dev.v, dev.seq_lens, scale);
        const Tensor apart = ops::mla_head_matmul(attended.view({c.B * c.T, c.H, c.D}), w.to(gpu));
        const Tensor ref = ops::mla_attention_head_matmul(cpu.q_nope, cpu.q_rope, cpu.k_nope, cpu.k_rope, cpu.v,
                                                          cpu.seq_lens, scale, w);
        const std::string what = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " D=" +
                                 std::to_string(c.D) + " splits=" + std::to_string(splits) + " " +
                                 std::string(dtype_name(dt));
        ASSERT_EQ(fused.shape(), (std::vector<int64_t>{c.B * c.T, c.H, c.N})) << what;
        EXPECT_EQ(fused.to_float_vector(), apart.to_float_vector()) << what;
        EXPECT_LT(relative_error(to_double(fused), to_double(ref)), 2 * tolerance(dt)) << what;
      }
}

}  // namespace
}  // namespace marlin
