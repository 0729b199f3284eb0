// GPU MLA attention and per-head products against the CPU kernels on the same strided operands:
// latent (absorbed) and expanded forms, GLM-4.7-Flash and DeepSeek head dims, forced and
// automatic split counts, long caches; outputs poisoned.
#include <gtest/gtest.h>

#include "cuda/cuda_test.h"
#include "kernels/cuda/mla_kernels_cuda.h"
#include "marlin/mla_ops.h"
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

// GLM's absorbed shapes, N off the 256-column tile, K off the 8-warp split, M across row blocks
// and past the vector kernel's 16 rows, N not a multiple of 8 (the general kernel).
TEST_F(MlaCuda, HeadMatmulMatchesCpu) {
  testing::PoisonScope poison;
  int seed = 5;
  for (const auto& [M, H, K, N] : std::vector<std::array<int64_t, 4>>{
           {1, 20, 192, 512}, {1, 20, 512, 256}, {6, 3, 37, 11}, {9, 128, 128, 512}, {2, 1, 512, 1},
           {5, 4, 100, 264}, {16, 3, 33, 8}, {17, 2, 64, 64}})
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

}  // namespace
}  // namespace marlin
