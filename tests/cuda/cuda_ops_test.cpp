// GPU-only tests: every CUDA op against its CPU reference over many shapes (tails included),
// outputs poisoned before each run. Run on a machine with a GPU (ctest -L cuda).
#include <gtest/gtest.h>

#include <cstdlib>
#include <tuple>

#include "cuda/cuda_test.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_q_wgmma.h"
#include "marlin/allocator.h"
#include "marlin/gemm.h"
#include "marlin/kernel_library.h"
#include "marlin/ops.h"
#include "marlin/ops_nn.h"
#include "marlin/timing.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::reference_gemm;
using testing::relative_error;
using testing::to_double;

class Cuda : public testing::CudaTest {};

const QuantFormat kFormats[] = {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2};

TEST_F(Cuda, TensorRoundTripAndViews) {
  Tensor t = random_tensor({7, 33}, DType::f16, 1);
  Tensor g = t.to(gpu);
  EXPECT_EQ(g.device(), gpu);
  EXPECT_EQ(g.to(Device::cpu()).to_float_vector(), t.to_float_vector());
  Tensor strided = g.narrow(1, 3, 10).contiguous();
  EXPECT_EQ(strided.to_float_vector(), t.narrow(1, 3, 10).contiguous().to_float_vector());
  EXPECT_EQ(g.to(DType::f32).to_float_vector(), t.to_float_vector());
}

TEST_F(Cuda, AllocatorReusesFreedBlocks) {
  auto& alloc = CudaCachingAllocator::instance();
  { Tensor warm = Tensor::empty({1 << 20}, DType::f32, gpu); }
  const uint64_t calls = alloc.stats(0).device_malloc_calls;
  for (int i = 0; i < 10; ++i) Tensor t = Tensor::empty({1 << 20}, DType::f32, gpu);
  EXPECT_EQ(alloc.stats(0).device_malloc_calls, calls);
  EXPECT_GE(alloc.stats(0).peak_allocated_bytes, size_t{4} << 20);
}

// time_graph captures fn(0 .. launches - 1) once (after one untimed fn(0)) and replays it: the
// work runs on every replay (the output below is the last replay's), and the time is per launch.
TEST_F(Cuda, GraphTimingCapturesEveryLaunchOnce) {
  const Tensor a = random_tensor({64, 256}, DType::f16, 1).to(gpu);
  Tensor out = Tensor::empty({64, 256}, DType::f32, gpu);
  std::vector<int> seen;
  const double ms = time_graph(gpu, 6, 3, [&](int i) {
    seen.push_back(i);
    out.copy_from(ops::cast(a, DType::f32));
  });
  EXPECT_EQ(seen, (std::vector<int>{0, 0, 1, 2, 3, 4, 5}));
  EXPECT_TRUE(std::isfinite(ms) && ms > 0.0) << ms;
  EXPECT_EQ(out.to(Device::cpu()).to_float_vector(), a.to(DType::f32).to(Device::cpu()).to_float_vector());
}

TEST_F(Cuda, QuantizeMatchesCpuBitForBit) {
  for (QuantFormat f : kFormats)
    for (ScaleMethod method : {ScaleMethod::absmax, ScaleMethod::mse})
      for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
        Tensor w = random_tensor({512, 203}, dt, 7 + static_cast<int>(f));
        const QuantizeOptions opt{.group_size = 64, .method = method};
        QuantizedWeight cpu = ops::quantize(w, f, opt);
        QuantizedWeight gpu_q = ops::quantize(w.to(gpu), f, opt);
        const Tensor got = gpu_q.packed.to(Device::cpu());
        int64_t mismatches = 0, first = -1;
        for (int64_t i = 0; i < got.numel(); ++i)
          if (got.data<uint32_t>()[i] != cpu.packed.data<uint32_t>()[i] && mismatches++ == 0) first = i;
        EXPECT_EQ(mismatches, 0) << format_name(f) << " " << dtype_name(dt) << " method "
                                 << static_cast<int>(method) << ", first at word " << first;
        EXPECT_EQ(gpu_q.scales.to(Device::cpu()).to_float_vector(), cpu.scales.to_float_vector())
            << format_name(f) << " " << dtype_name(dt);
      }
  std::vector<float> bad(64 * 2, 1.0f);
  bad[3] = INFINITY;
  EXPECT_THROW(ops::quantize(Tensor::from_vector(bad, {64, 2}, DType::f32).to(gpu), QuantFormat::fp4_e2m1, {.group_size = 32}), Error);
}

// N odd (a column a thread), a multiple of 8 (eight a thread, 16-byte stores) with a part-filled
// block, and more than one block of columns.
TEST_F(Cuda, DequantizeMatchesCpu) {
  testing::PoisonScope poison;
  for (const auto& [K, N] : {std::pair<int64_t, int64_t>{768, 131}, {768, 136}, {512, 1032}})
    for (QuantFormat f : kFormats)
      for (int g : {32, 128, 256}) {
        QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, g + N), f, {.group_size = g});
        const auto ref = dequantize_cpu(q).to_float_vector();
        for (DType out : {DType::f32, DType::f16, DType::bf16}) {
          const auto got = ops::dequantize(q.to(gpu), out).to_float_vector();
          const auto want = Tensor::from_vector(ref, {K, N}, DType::f32).to(out).to_float_vector();
          EXPECT_EQ(got, want) << format_name(f) << " g=" << g << " " << dtype_name(out) << " N=" << N;
        }
      }
}

// The GEMM on the GPU against float64 over shapes covering every path: M in the skinny range
// (each M tile), the cuBLAS range, N odd (scalar columns) and multiples of 4, K up to 16384
// with and without split-K.
TEST_F(Cuda, GemmMatchesFloat64) {
  testing::PoisonScope poison;
  std::mt19937 rng(99);
  const int groups[] = {32, 64, 128, 256};
  const int64_t Ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 64, 127, 300};
  int cases = 0;
  for (int i = 0; i < 78; ++i) {
    const QuantFormat f = kFormats[i % 3];
    const int g = groups[(i / 3) % 4];
    const int64_t M = Ms[i % 13];
    const int64_t K = g * static_cast<int64_t>(1 + rng() % (i % 6 == 0 ? 64 : 24));
    const int64_t N = i % 4 == 0 ? 1 + rng() % 700 : 4 * (1 + rng() % 1200);
    const DType dt = i % 2 ? DType::bf16 : DType::f16;
    Tensor W = random_tensor({K, N}, DType::f32, 500 + i, 0.05f);
    QuantizedWeight q = ops::quantize(W.to(gpu), f, {.group_size = g});
    // Odd cases use the tile layout (tensor-core kernel for f16, M <= 64), even ones the
    // canonical-layout kernels.
    const bool tiled = i % 2 == 1 || i % 3 == 0;
    if (tiled) ops::prepare_for_gemm(q);
    cuda::set_force_tiled_gemm(i % 4 == 1);
    Tensor A = random_tensor({M, K}, dt, 600 + i);
    Tensor bias = i % 5 == 0 ? random_tensor({N}, i % 10 == 0 ? DType::f32 : dt, 700 + i) : Tensor();
    Tensor C = ops::gemm_q(A.to(gpu), q, bias.defined() ? bias.to(gpu) : Tensor());
    const auto ref = reference_gemm(A, to_double(dequantize_cpu(q.to(Device::cpu()))), K, N, bias);
    const double tol = dt == DType::f16 ? 1e-3 : 6e-3;
    EXPECT_LT(relative_error(to_double(C), ref), tol)
        << format_name(f) << " M=" << M << " K=" << K << " N=" << N << " g=" << g << " "
        << dtype_name(dt) << (tiled ? " tiled" : "");
    ++cases;
  }
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 78);
}

TEST_F(Cuda, GemmIsDeterministicAcrossRuns) {
  QuantizedWeight q = ops::quantize(random_tensor({8192, 512}, DType::f32, 1, 0.05f).to(gpu), QuantFormat::fp4_e2m1);
  Tensor A = random_tensor({3, 8192}, DType::f16, 2).to(gpu);
  for (int tiled = 0; tiled < 2; ++tiled) {
    if (tiled) ops::prepare_for_gemm(q);
    const auto first = ops::gemm_q(A, q).to_float_vector();
    for (int i = 0; i < 5; ++i) EXPECT_EQ(ops::gemm_q(A, q).to_float_vector(), first);
  }
}

// The tile layout and the canonical kernels compute the same product on the big decode shapes
// (split-K and many slabs), for every M tile of the tensor-core kernels: M > 16 on the wgmma
// kernel (Hopper), the batch kernel and the per-slab one (which takes long K splits), 13..16 on the batch kernel
// where the stream kernel would cut a slab into many parts (K 8192: 32 rounds a slab), 12 on
// the stream kernel.
TEST_F(Cuda, TiledKernelMatchesReferenceOnLargeShapes) {
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);  // every M tile, even where cuBLAS would be chosen
  for (QuantFormat f : kFormats)
    for (const int64_t K : {4096, 8192}) {
      const int64_t N = K == 4096 ? 1000 : 136;
      Tensor W = random_tensor({K, N}, DType::f32, 31, 0.05f);
      QuantizedWeight q = ops::quantize(W.to(gpu), f, {.group_size = 128});
      ops::prepare_for_gemm(q);
      ASSERT_TRUE(q.tiled.defined()) << format_name(f);
      const auto deq = to_double(dequantize_cpu(q.to(Device::cpu())));
      for (DType dt : {DType::f16, DType::bf16})
        for (int64_t M : {1, 12, 16, 17, 40, 64})
          for (const char* kernel : {"wgmma", "batch", "per-slab"}) {
            const bool per_slab = kernel[0] == 'p', wgmma = kernel[0] == 'w';
            if ((per_slab || wgmma) && M <= 16) continue;
            if (wgmma && !cuda::wgmma_gemm_available(gpu.index)) continue;
            cuda::set_per_slab_gemm(per_slab);
            cuda::set_wgmma_gemm(wgmma ? 17 : 0, true);
            const int64_t launches = cuda::wgmma_gemm_launches();
            Tensor A = random_tensor({M, K}, dt, 32 + M);
            Tensor C = ops::gemm_q(A.to(gpu), q);
            EXPECT_EQ(cuda::wgmma_gemm_launches() > launches, wgmma) << kernel;
            EXPECT_LT(relative_error(to_double(C), reference_gemm(A, deq, K, N)), dt == DType::f16 ? 1e-3 : 6e-3)
                << format_name(f) << " K=" << K << " M=" << M << " " << dtype_name(dt) << " " << kernel;
          }
    }
  cuda::set_per_slab_gemm(false);
  cuda::reset_wgmma_gemm();
  cuda::set_force_tiled_gemm(false);
}

// One tile-layout GEMM case against float64: a random weight (seed `seed`) quantized at group g
// and repacked, A of M rows (seed + 100), a bias (seed + 200) where asked.
void expect_tiled_gemm_matches(const Device& gpu, int64_t K, int64_t N, QuantFormat f, int g, int64_t M, DType dt,
                               uint64_t seed, bool with_bias) {
  QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, seed, 0.05f).to(gpu), f, {.group_size = g});
  ops::prepare_for_gemm(q);
  ASSERT_TRUE(q.tiled.defined());
  Tensor A = random_tensor({M, K}, dt, seed + 100);
  Tensor bias = with_bias ? random_tensor({N}, dt, seed + 200) : Tensor();
  Tensor C = ops::gemm_q(A.to(gpu), q, bias.defined() ? bias.to(gpu) : Tensor());
  const auto ref = reference_gemm(A, to_double(dequantize_cpu(q.to(Device::cpu()))), K, N, bias);
  EXPECT_LT(relative_error(to_double(C), ref), dt == DType::f16 ? 1e-3 : 6e-3)
      << format_name(f) << " M=" << M << " K=" << K << " N=" << N << " g=" << g << " " << dtype_name(dt);
}

// The wgmma kernel (Hopper): A row counts from 1 to 64 on each of its 16-, 32- and 64-row
// variants (rows off every 8-row group), slabs past N in a block, K off the unit, each group size, every
// format, both activation dtypes, bias or none, one split and many; A laid out by the kernel
// and by the layout kernel before it.
TEST_F(Cuda, WgmmaKernelMatchesFloat64) {
  if (!cuda::wgmma_gemm_available(gpu.index)) GTEST_SKIP() << "needs an sm_90a build on a Hopper GPU";
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);
  cuda::set_wgmma_gemm(1, true);
  const std::pair<int64_t, int64_t> shapes[] = {{256, 64},   {512, 1000}, {4096, 130}, {1024, 4096},
                                                {768, 3000}, {8192, 136}, {2048, 24},  {2688, 520}};
  const int64_t Ms[] = {1, 3, 8, 9, 16, 17, 24, 31, 32, 33, 47, 64};
  const int groups[] = {32, 64, 128, 256};
  int cases = 0;
  for (int i = 0; i < 48; ++i) {
    const auto [K, N] = shapes[i % 8];
    const QuantFormat f = kFormats[(i + i / 8) % 3];
    const int g = K % 256 == 0 ? groups[(i / 3) % 4] : 32 << ((i / 3) % 3);
    const int64_t M = Ms[i % 12];
    const DType dt = (i / 12) % 2 ? DType::bf16 : DType::f16;
    for (int layout = 0; layout < 2; ++layout) {
      cuda::set_wgmma_layout(layout);
      const int64_t launches = cuda::wgmma_gemm_launches();
      expect_tiled_gemm_matches(gpu, K, N, f, g, M, dt, 1500 + i, i % 4 == 0);
      EXPECT_EQ(cuda::wgmma_gemm_launches() - launches, 1) << "M=" << M << " layout kernel " << layout;
      ++cases;
    }
  }
  cuda::reset_wgmma_gemm();
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 96);
}

// The wgmma kernel's wide variant (more than 64 rows, in 128-row tiles): rows off the tile and
// off every 8-row group, one tile and many, slabs past N, K off the unit, each group size, every
// format, both activation dtypes, bias or none, one K split and up to four. With the variant
// off, those rows do not take the kernel; unforced, only the sizes it was measured to win.
TEST_F(Cuda, WgmmaWideTilesMatchFloat64) {
  if (!cuda::wgmma_gemm_available(gpu.index)) GTEST_SKIP() << "needs an sm_90a build on a Hopper GPU";
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);
  cuda::set_wgmma_gemm(1, true);
  const std::pair<int64_t, int64_t> shapes[] = {{256, 64},  {4096, 130}, {1024, 4096}, {768, 3000},
                                                {2048, 24}, {2688, 520}, {8192, 136},  {512, 1000}};
  const int64_t Ms[] = {65, 96, 127, 128, 129, 200, 255, 300, 513};
  const int groups[] = {32, 64, 128, 256};
  int cases = 0;
  for (int i = 0; i < 27; ++i) {
    const auto [K, N] = shapes[i % 8];
    const QuantFormat f = kFormats[(i + i / 9) % 3];
    const int g = K % 256 == 0 ? groups[(i / 2) % 4] : 32 << ((i / 2) % 3);
    const int64_t M = Ms[i % 9];
    const DType dt = (i / 3) % 2 ? DType::bf16 : DType::f16;
    const int64_t launches = cuda::wgmma_gemm_launches();
    expect_tiled_gemm_matches(gpu, K, N, f, g, M, dt, 1700 + i, i % 4 == 1);
    EXPECT_EQ(cuda::wgmma_gemm_launches() - launches, 1) << "M=" << M << " K=" << K << " N=" << N;
    ++cases;
  }
  cuda::set_wgmma_wide(false);
  int64_t launches = cuda::wgmma_gemm_launches();
  expect_tiled_gemm_matches(gpu, 1024, 4096, QuantFormat::fp4_e2m1, 128, 200, DType::bf16, 1790, false);
  EXPECT_EQ(cuda::wgmma_gemm_launches(), launches) << "the wide variant ran while off";
  cuda::reset_wgmma_gemm();
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 27);
  // Unforced, the tiles take 65-256 rows of weights of over 2^24 values only.
  if (std::getenv("MARLIN_WGMMA_WIDE") != nullptr) return;
  for (const auto& [K, N, M, taken] : {std::tuple<int64_t, int64_t, int64_t, bool>{4096, 8192, 128, true},
                                       {4096, 8192, 256, true}, {4096, 8192, 300, false}, {1024, 4096, 128, false}}) {
    QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 1791, 0.05f).to(gpu), QuantFormat::fp4_e2m1,
                                      {.group_size = 128});
    ops::prepare_for_gemm(q);
    launches = cuda::wgmma_gemm_launches();
    ops::gemm_q(random_tensor({M, K}, DType::bf16, 1792).to(gpu), q);
    EXPECT_EQ(cuda::wgmma_gemm_launches() - launches, taken ? 1 : 0) << "K=" << K << " N=" << N << " M=" << M;
  }
}

// The M <= 16 stream-K kernel: warps whose ranges split a slab (long K, few slabs), cover many
// slabs (short K, wide N), or get no work at all (tiny weights), N and K off every tile, each
// group size, every A row count kernel (INT2's one-row kernel at M = 1, 8 rows up to M = 8, 16
// up to 16), every format at each M, and both activation dtypes.
TEST_F(Cuda, StreamKernelMatchesFloat64) {
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);  // also for weights the canonical kernel would take
  const std::pair<int64_t, int64_t> shapes[] = {{256, 64},  {512, 1000}, {256, 65},   {4096, 130},
                                                {1024, 4096}, {8192, 96}, {768, 3000}, {2048, 24}};
  const int64_t Ms[] = {1, 2, 5, 8, 9, 16};
  const int groups[] = {32, 64, 128, 256};
  int cases = 0;
  for (int i = 0; i < 48; ++i) {
    const auto [K, N] = shapes[i % 8];
    const QuantFormat f = kFormats[(i + i / 6) % 3];
    const int g = groups[(i / 3) % 4];
    const int64_t M = Ms[i % 6];
    const DType dt = (i / 8) % 2 ? DType::bf16 : DType::f16;
    expect_tiled_gemm_matches(gpu, K, N, f, g, M, dt, 900 + i, i % 4 == 0);
    ++cases;
  }
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 48);
}

// Slabs summed from many warps' partials (up to 56 parts, more than one batch of loads), at
// M = 1 (two lanes share each column quad and split the parts) and at M = 2 and 3, every format
// at each M.
TEST_F(Cuda, StreamKernelSumsManyPartsPerSlab) {
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);
  const std::pair<int64_t, int64_t> shapes[] = {{8192, 96}, {14336, 64}, {4096, 130}, {2944, 200}};
  int cases = 0;
  for (const auto& [K, N] : shapes)
    for (int64_t M : {1, 2, 3})
      for (DType dt : {DType::f16, DType::bf16}) {
        const QuantFormat f = kFormats[(cases + cases / 6) % 3];
        QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 1200 + cases, 0.05f).to(gpu), f, {.group_size = 128});
        ops::prepare_for_gemm(q);
        Tensor A = random_tensor({M, K}, dt, 1300 + cases);
        Tensor C = ops::gemm_q(A.to(gpu), q);
        const auto ref = reference_gemm(A, to_double(dequantize_cpu(q.to(Device::cpu()))), K, N);
        EXPECT_LT(relative_error(to_double(C), ref), dt == DType::f16 ? 1e-3 : 6e-3)
            << format_name(f) << " M=" << M << " K=" << K << " N=" << N << " " << dtype_name(dt);
        ++cases;
      }
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 24);
}

// Rounds of single stages (what launch_stream picks where they shorten the longest warp's share)
// start and end warps' ranges inside scale groups that span stages (FP4 and FP8 at group 128
// and 256, INT2 at 256): the first stage starts a group's sums and the last applies its scale.
// Automatic rounds as well, at the same shapes.
TEST_F(Cuda, StreamKernelSplitsScaleGroupsBetweenWarps) {
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 1000}, {8192, 96}, {2816, 200}, {14336, 64}};
  int cases = 0;
  for (const int round_stages : {1, 0})
    for (int i = 0; i < 12; ++i) {
      const auto [K, N] = shapes[i % 4];
      const QuantFormat f = kFormats[(i + i / 3) % 3];  // each format at M = 1, 3 and 8
      const int g = i % 2 ? 128 : 256;
      const int64_t M = i % 3 == 0 ? 1 : i % 3 == 1 ? 3 : 8;
      const DType dt = i % 4 < 2 ? DType::bf16 : DType::f16;
      QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 1600 + i, 0.05f).to(gpu), f, {.group_size = g});
      ops::prepare_for_gemm(q);
      Tensor A = random_tensor({M, K}, dt, 1700 + i);
      cuda::set_stream_round_stages(round_stages);
      Tensor C = ops::gemm_q(A.to(gpu), q);
      const auto ref = reference_gemm(A, to_double(dequantize_cpu(q.to(Device::cpu()))), K, N);
      EXPECT_LT(relative_error(to_double(C), ref), dt == DType::f16 ? 1e-3 : 6e-3)
          << format_name(f) << " M=" << M << " K=" << K << " N=" << N << " g=" << g << " " << dtype_name(dt)
          << " round stages " << round_stages;
      ++cases;
    }
  cuda::set_stream_round_stages(0);
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 24);
}

// Launches of different shapes share the stream kernel's scratch (the partials, laid out by
// each launch's slab and part counts, and the per-slab arrival counts that the last warp resets):
// shapes interleaved, every launch equals the first of its shape, bit for bit, so no launch
// reads a count or a partial that an earlier one left.
TEST_F(Cuda, StreamKernelLeavesNoStalePartials) {
  cuda::set_force_tiled_gemm(true);
  struct Case {
    int64_t K, N, M;
  };
  const Case cases[] = {{8192, 96, 1}, {4096, 130, 3}, {14336, 64, 2}, {2944, 200, 1}};
  std::vector<QuantizedWeight> weights;
  std::vector<Tensor> inputs;
  std::vector<std::vector<float>> first;
  for (size_t i = 0; i < std::size(cases); ++i) {
    const Case& c = cases[i];
    weights.push_back(ops::quantize(random_tensor({c.K, c.N}, DType::f32, 1400 + i, 0.05f).to(gpu), QuantFormat::fp4_e2m1));
    ops::prepare_for_gemm(weights.back());
    Tensor A = random_tensor({c.M, c.K}, DType::bf16, 1500 + i);
    inputs.push_back(A.to(gpu));
    first.push_back(ops::gemm_q(inputs.back(), weights.back()).to_float_vector());
    const auto ref = reference_gemm(A, to_double(dequantize_cpu(weights.back().to(Device::cpu()))), c.K, c.N);
    EXPECT_LT(relative_error(std::vector<double>(first.back().begin(), first.back().end()), ref), 6e-3) << "K=" << c.K;
  }
  for (int round = 0; round < 3; ++round)
    for (size_t i = 0; i < std::size(cases); ++i)
      EXPECT_EQ(ops::gemm_q(inputs[i], weights[i]).to_float_vector(), first[i]) << "round " << round << " K=" << cases[i].K;
  cuda::set_force_tiled_gemm(false);
}

// The tile kernels for M > 16 multiply in fp16 (the scale by a code's value): weights whose
// largest scale keeps every factor and product finite take the tile layout and give the
// reference's product at M = 1 and 40; larger ones keep the canonical layout and give it too.
// Each group's absmax is set, so its scale is the bound times 0.95 or 1.1.
TEST_F(Cuda, TileLayoutTakesOnlyScalesWhoseProductsStayFinite) {
  testing::PoisonScope poison;
  struct Case {
    QuantFormat f;
    float code_max, bound;  // the largest code value, the largest scale the layout takes
  };
  const Case cases[] = {{QuantFormat::fp4_e2m1, 6.0f, 65504.0f / 16384.0f},
                        {QuantFormat::fp8_e4m3, 448.0f, 65504.0f / 448.0f},
                        {QuantFormat::int2, 1.5f, 65504.0f / 1.5f}};
  constexpr int64_t K = 256, N = 96, g = 128;
  cuda::set_force_tiled_gemm(true);  // M = 40 on the tile kernels wherever the layout exists
  for (const Case& c : cases)
    for (const float ratio : {0.95f, 1.1f}) {
      const float absmax = c.bound * ratio * c.code_max;
      std::mt19937 rng(7);
      std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
      std::vector<float> w(K * N);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
          w[k * N + n] = k % g == n % g ? (n % 2 ? absmax : -absmax) : absmax * unit(rng);
      QuantizedWeight q = ops::quantize(Tensor::from_vector(w, {K, N}, DType::f32).to(gpu), c.f, {.group_size = g});
      ops::prepare_for_gemm(q);
      EXPECT_EQ(q.tiled.defined(), ratio < 1.0f) << format_name(c.f) << " scale " << ratio << " x the bound";
      const auto deq = to_double(dequantize_cpu(q.to(Device::cpu())));
      for (const int64_t M : {1, 40}) {
        Tensor A = random_tensor({M, K}, DType::bf16, 90 + M, 1e-3f);
        Tensor C = ops::gemm_q(A.to(gpu), q);
        EXPECT_LT(relative_error(to_double(C), reference_gemm(A, deq, K, N)), 6e-3)
            << format_name(c.f) << " scale " << ratio << " x the bound, M=" << M;
      }
    }
  cuda::set_force_tiled_gemm(false);
}

// The tile layout on the small weights of tiny models (K of one to nine 32-wide units, so less
// than one 8-unit round, N far below a 64-column slab) at every M the tiled kernels take.
TEST_F(Cuda, TiledKernelsMatchFloat64OnSmallWeights) {
  testing::PoisonScope poison;
  cuda::set_force_tiled_gemm(true);
  const std::pair<int64_t, int64_t> shapes[] = {{32, 64}, {64, 40}, {64, 96}, {96, 64},
                                                {160, 24}, {288, 130}, {64, 256}, {32, 576}};
  const int64_t Ms[] = {1, 9, 12, 16, 17, 40, 64};
  int cases = 0;
  for (int i = 0; i < 56; ++i) {
    const auto [K, N] = shapes[i % 8];
    const QuantFormat f = kFormats[i % 3];
    const int64_t M = Ms[i % 7];
    const DType dt = (i / 7) % 2 ? DType::bf16 : DType::f16;
    QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 1300 + i, 0.15f).to(gpu), f, {.group_size = 32});
    ops::prepare_for_gemm(q);
    ASSERT_TRUE(q.tiled.defined());
    Tensor A = random_tensor({M, K}, dt, 1400 + i);
    cuda::set_per_slab_gemm(i % 2 == 1);  // M > 16: both kernels
    Tensor C = ops::gemm_q(A.to(gpu), q, Tensor());
    const auto ref = reference_gemm(A, to_double(dequantize_cpu(q.to(Device::cpu()))), K, N, Tensor());
    EXPECT_LT(relative_error(to_double(C), ref), dt == DType::f16 ? 1e-3 : 6e-3)
        << format_name(f) << " M=" << M << " K=" << K << " N=" << N << " " << dtype_name(dt);
    ++cases;
  }
  cuda::set_per_slab_gemm(false);
  cuda::set_force_tiled_gemm(false);
  EXPECT_EQ(cases, 56);
}

TEST_F(Cuda, DenseGemmMatchesFloat64) {
  Tensor A = random_tensor({37, 320}, DType::bf16, 3);
  Tensor B = random_tensor({320, 129}, DType::bf16, 4, 0.1f);
  Tensor C = ops::gemm(A.to(gpu), B.to(gpu));
  EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(B), 320, 129)), 6e-3);
}

TEST_F(Cuda, MixedDevicesAreErrors) {
  QuantizedWeight q = ops::quantize(random_tensor({128, 16}, DType::f32, 1), QuantFormat::fp4_e2m1, {.group_size = 32});
  Tensor A = random_tensor({2, 128}, DType::f16, 2).to(gpu);
  try {
    ops::gemm_q(A, q);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
}

TEST_F(Cuda, DispatchRuntimeCompiledKernel) {
  KernelLibrary lib(gpu);
  lib.compile_source("mine", R"(
extern "C" __global__ void scale_f32(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
})");
  Tensor x = random_tensor({1000}, DType::f32, 5);
  Tensor xg = x.to(gpu);
  dispatch_kernel(lib, "scale_f32", {4, 1, 1}, {256, 1, 1}, {xg, 3.0f, int32_t{1000}});
  const auto got = xg.to_float_vector();
  const auto want = x.to_float_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i] * 3.0f);
  EXPECT_NE(lib.get_function("gemm_fp4_m1_f16").handle, nullptr);  // a built-in
  EXPECT_THROW(dispatch_kernel(lib, "nope", {1, 1, 1}, {1, 1, 1}, {}), Error);
  EXPECT_THROW(dispatch_kernel(lib, "scale_f32", {1, 1, 1}, {1, 1, 1}, {x, 1.0f, int32_t{1}}), Error);
}

TEST_F(Cuda, DispatchApiOnGpuMatchesCpu) {
  KernelLibrary& lib = default_library();
  EXPECT_EQ(lib.device(), gpu);
  const int64_t M = 5, K = 1024, N = 96;
  QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 3, 0.05f), QuantFormat::fp4_e2m1, {.group_size = 32});
  Tensor A = random_tensor({M, K}, DType::f16, 4);
  Tensor cpu = dispatch_gemm_fp4(lib, A, q.packed, q.scales, M, N, K);
  Tensor gpu_c = dispatch_gemm_fp4(lib, A.to(gpu), q.packed.to(gpu), q.scales.to(gpu), M, N, K);
  EXPECT_LT(relative_error(to_double(gpu_c), to_double(cpu)), 1e-3);
  DequantBenchmarkResult r = benchmark_dequant_fp4(lib, 1 << 20, 32, 2, 5);
  EXPECT_GT(r.bandwidth_gb_s, 10.0);
}

}  // namespace
}  // namespace marlin
