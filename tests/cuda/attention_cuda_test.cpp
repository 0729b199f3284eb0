// GPU attention against the CPU reference: prefill (tiled kernel) and decode/extend
// (flash-decoding, forced and automatic split counts, caches of 4096), outputs poisoned.
#include <gtest/gtest.h>

#include "cuda/cuda_test.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "marlin/attention.h"
#include "marlin/kv_cache.h"
#include "marlin/model_config.h"
#include "marlin/ops_nn.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class AttentionCuda : public testing::CudaTest {
 protected:
  void TearDown() override {
    cuda::set_attention_decode_splits(0);
    cuda::set_attention_decode_cluster(true);
  }
};

const auto tolerance = testing::attention_tolerance;

TEST_F(AttentionCuda, PrefillMatchesCpu) {
  testing::PoisonScope poison;
  const DType dtypes[] = {DType::f16, DType::bf16, DType::f32};
  int seed = 0;
  for (int64_t D : {64, 80, 96, 128, 256})
    for (int64_t group : {1, 2, 4, 8})
      for (int64_t T : {1, 17, 100, 300})
        for (int64_t window : {0, 33}) {
          const DType dt = dtypes[seed % 3];
          ++seed;
          const int64_t Hkv = 2, Hq = Hkv * group;
          Tensor q = random_tensor({T, Hq, D}, dt, seed * 3);
          Tensor k = random_tensor({T, Hkv, D}, dt, seed * 3 + 1);
          Tensor v = random_tensor({T, Hkv, D}, dt, seed * 3 + 2);
          const float scale = 1.0f / std::sqrt(static_cast<float>(D));
          const auto want = to_double(ops::attention_prefill(q, k, v, scale, window));
          const auto got = to_double(ops::attention_prefill(q.to(gpu), k.to(gpu), v.to(gpu), scale, window));
          EXPECT_LT(relative_error(got, want), tolerance(dt))
              << "D=" << D << " group=" << group << " T=" << T << " window=" << window << " "
              << dtype_name(dt);
        }
}

// Long prompts on the cuBLAS path, cut into several query chunks (64 heads x 1500 tokens needs
// more than the workspace), GQA, with and without a sliding window.
TEST_F(AttentionCuda, LongPrefillInChunksMatchesCpu) {
  testing::PoisonScope poison;
  int seed = 900;
  for (int64_t window : {0, 700})
    for (DType dt : {DType::bf16, DType::f16}) {
      const int64_t T = 1500, Hkv = 8, Hq = 64, D = 64;
      Tensor q = random_tensor({T, Hq, D}, dt, ++seed);
      Tensor k = random_tensor({T, Hkv, D}, dt, ++seed);
      Tensor v = random_tensor({T, Hkv, D}, dt, ++seed);
      const float scale = 0.125f;
      const auto want = to_double(ops::attention_prefill(q, k, v, scale, window));
      const auto got = to_double(ops::attention_prefill(q.to(gpu), k.to(gpu), v.to(gpu), scale, window));
      EXPECT_LT(relative_error(got, want), tolerance(dt)) << "window=" << window << " " << dtype_name(dt);
    }
}

TEST_F(AttentionCuda, DecodeMatchesCpuOnLongCaches) {
  testing::PoisonScope poison;
  int seed = 50;
  for (int64_t D : {64, 80, 128, 256})
    for (int splits : {0, 1, 7, 64})  // 64: the most the in-kernel merge holds
      for (int64_t window : {0, 1000}) {
        ++seed;
        const DType dt = seed % 2 ? DType::bf16 : DType::f16;
        const int64_t B = 2, Hkv = 2, Hq = 8, S = 4096;
        const std::vector<int32_t> lens{4096, 1501};
        Tensor q = random_tensor({B, Hq, D}, dt, seed * 3);
        Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 1);
        Tensor vc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 2);
        const Tensor seq_lens = Tensor::from_vector(lens, {B}, DType::i32);
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        const auto want = to_double(ops::attention_decode(q, kc, vc, seq_lens, scale, window));
        cuda::set_attention_decode_splits(splits);
        const auto got = to_double(ops::attention_decode(q.to(gpu), kc.to(gpu), vc.to(gpu),
                                                         seq_lens.to(gpu), scale, window));
        EXPECT_LT(relative_error(got, want), tolerance(dt))
            << "D=" << D << " splits=" << splits << " window=" << window << " " << dtype_name(dt);
      }
}

TEST_F(AttentionCuda, ExtendMatchesCpu) {
  testing::PoisonScope poison;
  int seed = 200;
  for (int64_t D : {96, 128})
    for (int64_t group : {1, 4, 16})
      for (DType dt : {DType::f32, DType::f16}) {
        ++seed;
        const int64_t B = 3, T = 5, Hkv = 2, Hq = Hkv * group, S = 700;
        const std::vector<int32_t> lens{700, 5, 333};
        Tensor q = random_tensor({B, T, Hq, D}, dt, seed * 3);
        Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 1);
        Tensor vc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 2);
        const Tensor seq_lens = Tensor::from_vector(lens, {B}, DType::i32);
        const auto want = to_double(ops::attention_extend(q, kc, vc, seq_lens, 0.1f, 64));
        const auto got = to_double(ops::attention_extend(q.to(gpu), kc.to(gpu), vc.to(gpu),
                                                         seq_lens.to(gpu), 0.1f, 64));
        EXPECT_LT(relative_error(got, want), tolerance(dt))
            << "D=" << D << " group=" << group << " " << dtype_name(dt);
      }
}

// More (batch, position) rows than a launch's grid z holds (65535): a batched prompt of 128 x
// 512 tokens failed its launch. A 4-key window keeps the CPU reference short.
TEST_F(AttentionCuda, ExtendPastTheGridsRowLimitMatchesCpu) {
  testing::PoisonScope poison;
  const int64_t B = 2, T = 33000, Hkv = 1, Hq = 2, D = 64, S = T + 10;
  const std::vector<int32_t> lens{33000, 33010};
  Tensor q = random_tensor({B, T, Hq, D}, DType::f16, 301);
  Tensor kc = random_tensor({B, Hkv, S, D}, DType::f16, 302);
  Tensor vc = random_tensor({B, Hkv, S, D}, DType::f16, 303);
  const Tensor seq_lens = Tensor::from_vector(lens, {B}, DType::i32);
  for (int splits : {0, 1, 2}) {
    cuda::set_attention_decode_splits(splits);
    const auto want = to_double(ops::attention_extend(q, kc, vc, seq_lens, 0.125f, 4));
    const auto got = to_double(ops::attention_extend(q.to(gpu), kc.to(gpu), vc.to(gpu), seq_lens.to(gpu), 0.125f, 4));
    EXPECT_LT(relative_error(got, want), tolerance(DType::f16)) << "splits=" << splits;
  }
  cuda::set_attention_decode_splits(0);
}

TEST_F(AttentionCuda, KVCacheWritesLikeTheCpu) {
  const KVCacheConfig config{.num_layers = 2, .num_kv_heads = 4, .head_dim = 80, .max_seq_len = 64, .dtype = DType::bf16};
  KVCache host(config, 2), device(config, 2, gpu);
  for (int step = 0; step < 3; ++step) {
    const int64_t n = step == 0 ? 9 : 1;
    Tensor k = random_tensor({2, n, 4, 80}, DType::bf16, 10 + step), v = random_tensor({2, n, 4, 80}, DType::bf16, 20 + step);
    auto [hk, hv] = host.update(1, k.transpose(1, 2), v.transpose(1, 2));
    auto [dk, dv] = device.update(1, k.to(gpu).transpose(1, 2), v.to(gpu).transpose(1, 2));
    EXPECT_EQ(dk.to_float_vector(), hk.contiguous().to_float_vector());
    EXPECT_EQ(dv.to_float_vector(), hv.contiguous().to_float_vector());
    host.advance(n);
    device.advance(n);
  }
  EXPECT_EQ(device.seq_lens().to_float_vector(), (std::vector<float>{11, 11}));
}

// ops::rope_cache_write (one launch on CUDA) against the CPU's rope then cache write: q, k and
// v as head slices of one fused QKV output (v must stay as it was), full and partial rotary,
// both layouts, rows with and without per-row counts (a row writing nothing); the caches start
// random, so a stray write or a missed one shows.
TEST_F(AttentionCuda, RopeCacheWriteMatchesCpu) {
  const int64_t B = 3, Hq = 8, Hkv = 2, S = 12;
  const std::vector<int32_t> starts{0, 7, 3};
  int seed = 900;
  for (int64_t T : {1, 5})
    for (int64_t D : {64, 128})
      for (int64_t rotary : {D, D / 2})
        for (auto layout : {ops::RopeLayout::half_split, ops::RopeLayout::interleaved})
          for (bool with_counts : {false, true}) {
            ++seed;
            const DType dt = seed % 2 ? DType::bf16 : DType::f16;
            const ops::RopeParams p = ops::rope_params(500000, rotary, RopeScaling{}, 131072, layout);
            std::vector<int32_t> pos, counts{static_cast<int32_t>(T), static_cast<int32_t>(T > 1 ? 2 : 1), 0};
            for (int64_t b = 0; b < B; ++b)
              for (int64_t t = 0; t < T; ++t) pos.push_back(starts[b] + static_cast<int32_t>(t));
            const Tensor positions = Tensor::from_vector(pos, {B * T}, DType::i32);
            const Tensor cnt = with_counts ? Tensor::from_vector(counts, {B}, DType::i32) : Tensor();
            const Tensor st = Tensor::from_vector(starts, {B}, DType::i32);
            Tensor qkv = random_tensor({B * T, Hq + 2 * Hkv, D}, dt, seed);
            Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed + 1), vc = random_tensor({B, Hkv, S, D}, dt, seed + 2);
            Tensor qkv_g = qkv.to(gpu), kc_g = kc.to(gpu), vc_g = vc.to(gpu);
            auto run = [&](Tensor& x, Tensor& k_cache, Tensor& v_cache, Device d) {
              ops::rope_cache_write(x.narrow(1, 0, Hq), x.narrow(1, Hq, Hkv), x.narrow(1, Hq + Hkv, Hkv),
                                    positions.to(d), p.to(d), k_cache, v_cache, st.to(d),
                                    cnt.defined() ? cnt.to(d) : Tensor());
            };
            run(qkv, kc, vc, Device::cpu());
            run(qkv_g, kc_g, vc_g, gpu);
            const std::string what = "T=" + std::to_string(T) + " D=" + std::to_string(D) + " rotary=" +
                                     std::to_string(rotary) + " counts=" + std::to_string(with_counts);
            // cos/sin of the same f32 angles: CUDA's sincosf and glibc's agree to an ulp or two.
            EXPECT_LT(relative_error(to_double(qkv_g), to_double(qkv)), 1e-2) << what;
            EXPECT_LT(relative_error(to_double(kc_g), to_double(kc)), 1e-2) << what;
            EXPECT_EQ(vc_g.to_float_vector(), vc.to_float_vector()) << what;  // values: copied bits
            EXPECT_EQ(qkv_g.narrow(1, Hq + Hkv, Hkv).contiguous().to_float_vector(),
                      qkv.narrow(1, Hq + Hkv, Hkv).contiguous().to_float_vector()) << what;
          }
}

// ops::rope_attention_decode (one launch on CUDA: RoPE, the cache append, split attention and
// the merge by the last block) against the CPU's separate ops, and against the separate CUDA
// launches: the caches (random to start with, so a stray or a missing write shows) must equal
// those of rope_cache_write bit for bit, the outputs the CPU's within the attention bound. Rows
// at position 0, mid-cache and at the cache's end; GQA groups that take one and two head chunks
// a block; full and partial rotary in both layouts; forced and automatic split counts. Both
// kernels: the splits merged in a thread-block cluster (up to 16 splits; head_dim 64, 128, 256;
// keys beyond a warp's preload at 1 and 5 splits, and in a single row's 2000-position cache at
// the automatic count) and through global memory (64 splits, head_dim 80, or the cluster kernel
// switched off).
TEST_F(AttentionCuda, RopeAttentionDecodeMatchesSeparateOps) {
  testing::PoisonScope poison;
  const DType dtypes[] = {DType::bf16, DType::f16, DType::f32};
  const int64_t Hkv = 2;
  struct Rows {
    int64_t B, S;
    std::vector<int32_t> starts, pos;  // the angles' positions need not be the slots
  };
  const Rows shapes[] = {{3, 300, {0, 157, 299}, {3, 160, 1000}}, {1, 2000, {1999}, {2100}}};
  int seed = 1300;
  for (const Rows& rows : shapes)
    for (bool cluster : {true, false})
      for (int64_t D : {64, 80, 128, 256})
        for (int64_t group : {1, 4, 12})
          for (int splits : {0, 1, 5, 16, 64})
            for (int64_t window : {0, 37}) {
              if (rows.B == 1 && splits != 0) continue;  // the long row: its automatic split count
              const int64_t B = rows.B, S = rows.S;
              const std::vector<int32_t>& starts = rows.starts;
              ++seed;
              const DType dt = dtypes[seed % 3];
              const int64_t Hq = Hkv * group, rotary = seed % 2 ? D : D / 2;
              const auto layout = seed % 4 < 2 ? ops::RopeLayout::half_split : ops::RopeLayout::interleaved;
              const ops::RopeParams p = ops::rope_params(10000, rotary, RopeScaling{}, 4096, layout);
              const Tensor positions = Tensor::from_vector(rows.pos, {B}, DType::i32);
              const Tensor st = Tensor::from_vector(starts, {B}, DType::i32);
              const Tensor qkv = random_tensor({B, Hq + 2 * Hkv, D}, dt, seed);
              const Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed + 1);
              const Tensor vc = random_tensor({B, Hkv, S, D}, dt, seed + 2);
              const float scale = 1.0f / std::sqrt(static_cast<float>(D));
              auto heads = [&](Tensor& x, int64_t first, int64_t n) { return x.narrow(1, first, n); };
              // The CPU reference (rope_cache_write, then attention_decode).
              Tensor x_cpu = qkv.clone(), kc_cpu = kc.clone(), vc_cpu = vc.clone();
              const auto want = to_double(ops::rope_attention_decode(heads(x_cpu, 0, Hq), heads(x_cpu, Hq, Hkv),
                                                                     heads(x_cpu, Hq + Hkv, Hkv), positions, p, kc_cpu,
                                                                     vc_cpu, st, scale, window));
              // The separate CUDA launches, for the caches.
              Tensor x_sep = qkv.to(gpu), kc_sep = kc.to(gpu), vc_sep = vc.to(gpu);
              ops::rope_cache_write(heads(x_sep, 0, Hq), heads(x_sep, Hq, Hkv), heads(x_sep, Hq + Hkv, Hkv),
                                    positions.to(gpu), p.to(gpu), kc_sep, vc_sep, st.to(gpu));
              // The fused launch.
              cuda::set_attention_decode_splits(splits);
              cuda::set_attention_decode_cluster(cluster);
              Tensor x = qkv.to(gpu), kc_g = kc.to(gpu), vc_g = vc.to(gpu);
              const Tensor got =
                  ops::rope_attention_decode(heads(x, 0, Hq), heads(x, Hq, Hkv), heads(x, Hq + Hkv, Hkv),
                                             positions.to(gpu), p.to(gpu), kc_g, vc_g, st.to(gpu), scale, window);
              const std::string what = "S=" + std::to_string(S) + " D=" + std::to_string(D) + " group=" +
                                       std::to_string(group) + " splits=" + std::to_string(splits) + " window=" +
                                       std::to_string(window) + " rotary=" + std::to_string(rotary) + " " +
                                       std::string(dtype_name(dt)) + (cluster ? " cluster" : " global");
              ASSERT_EQ(got.shape(), (std::vector<int64_t>{B, Hq, D})) << what;
              // Twice the attention bound: CUDA's sincosf and glibc's may round a cos or sin to
              // neighbouring values of a 16-bit dtype.
              EXPECT_LT(relative_error(to_double(got), want), 2 * tolerance(dt)) << what;
              EXPECT_EQ(kc_g.to_float_vector(), kc_sep.to_float_vector()) << what;
              EXPECT_EQ(vc_g.to_float_vector(), vc_sep.to_float_vector()) << what;
              EXPECT_EQ(x.to_float_vector(), qkv.to_float_vector()) << what;  // q, k, v left as they were
            }
}

}  // namespace
}  // namespace marlin
