// The CPU quantized GEMM against a float64 reference over many shapes, and the argument checks
// of the original API's entry points.
#include <gtest/gtest.h>

#include "kernels/cpu/cpu_kernels.h"
#include "marlin/gemm.h"
#include "marlin/ops.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::reference_gemm;
using testing::relative_error;
using testing::to_double;

struct GemmCase {
  QuantFormat format;
  int64_t M, K, N;
  int group_size;
  DType dtype;
  bool bias;
};

void check_gemm_against_float64(const GemmCase& c, uint64_t seed) {
  testing::PoisonScope poison;
  Tensor W = random_tensor({c.K, c.N}, DType::f32, seed, 0.05f);
  QuantizedWeight q = ops::quantize(W, c.format, {.group_size = c.group_size});
  Tensor A = random_tensor({c.M, c.K}, c.dtype, seed + 1);
  Tensor bias = c.bias ? random_tensor({c.N}, DType::f32, seed + 2) : Tensor();
  Tensor C = ops::gemm_q(A, q, bias);
  ASSERT_EQ(C.shape(), Shape({c.M, c.N}));
  ASSERT_EQ(C.dtype(), c.dtype);
  const auto ref = reference_gemm(A, to_double(dequantize_cpu(q)), c.K, c.N, bias);
  const double tol = c.dtype == DType::f16 ? 1e-3 : 6e-3;
  EXPECT_LT(relative_error(to_double(C), ref), tol)
      << format_name(c.format) << " M=" << c.M << " K=" << c.K << " N=" << c.N << " g=" << c.group_size;
}

TEST(GemmCpu, MatchesFloat64OverRandomShapes) {
  std::mt19937 rng(42);
  const QuantFormat formats[] = {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2};
  const int groups[] = {32, 64, 128, 256};
  for (int i = 0; i < 36; ++i) {
    GemmCase c;
    c.format = formats[i % 3];
    c.group_size = groups[(i / 3) % 4];
    c.K = c.group_size * static_cast<int64_t>(1 + rng() % (i < 30 ? 12 : 64));  // up to 16384
    c.N = 1 + static_cast<int64_t>(rng() % 300);  // odd sizes too
    c.M = 1 + static_cast<int64_t>(rng() % (i % 4 == 0 ? 300 : 17));
    c.dtype = i % 2 ? DType::bf16 : DType::f16;
    c.bias = i % 5 == 0;
    check_gemm_against_float64(c, 1000 + i);
  }
}

// The decode-size path (M <= 4, N a multiple of 8) for every format, group size and dtype.
TEST(GemmCpu, DecodePathMatchesFloat64) {
  const QuantFormat formats[] = {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2};
  int i = 0;
  for (QuantFormat f : formats)
    for (int g : {32, 64, 128, 256})
      for (int64_t M = 1; M <= 4; ++M, ++i)
        check_gemm_against_float64({f, M, 2 * g + 256, 8 * (1 + i % 9), g, i % 2 ? DType::bf16 : DType::f16, i % 3 == 0},
                                   3000 + i);
}

// The decode path at widths that are not multiples of its 16-column vectors or of its tasks,
// f32 activations included (the CPU model's default), every format.
TEST(GemmCpu, DecodePathOddWidthsMatchFloat64) {
  int i = 0;
  for (QuantFormat f : {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2})
    for (int64_t N : {1, 15, 17, 40, 529})
      for (int64_t M = 1; M <= 4; ++M, ++i) {
        const int g = i % 2 ? 32 : 128;
        check_gemm_against_float64({f, M, 2 * g, N, g, i % 3 ? DType::bf16 : DType::f16, i % 4 == 0}, 5000 + i);
        testing::PoisonScope poison;
        const Tensor W = random_tensor({2 * g, N}, DType::f32, 6000 + i, 0.05f);
        const QuantizedWeight q = ops::quantize(W, f, {.group_size = g});
        const Tensor A = random_tensor({M, 2 * g}, DType::f32, 7000 + i);
        Tensor C = Tensor::empty({M, N}, DType::f32);
        cpu::gemm_q(A, q, {}, C);
        EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(dequantize_cpu(q)), 2 * g, N)), 1e-5)
            << format_name(f) << " f32 M=" << M << " N=" << N;
      }
}

// Every code of FP4 and INT2, and FP8's smallest (subnormals, both zeros, the first normals),
// through the decode path, each with a weight that shows in the sum: packed words that walk
// through the codes, scales of one, against float64 of the reference dequantization (weights
// quantized from random values seldom hit FP8's subnormals, and then too small to catch a
// wrong one).
TEST(GemmCpu, DecodePathDecodesEveryCode) {
  testing::PoisonScope poison;
  for (QuantFormat f : {QuantFormat::fp4_e2m1, QuantFormat::fp8_e4m3, QuantFormat::int2}) {
    const int64_t K = 256, N = 24, P = 32 / format_bits(f);
    QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 11, 0.05f), f, {.group_size = 128});
    uint32_t* words = q.packed.data<uint32_t>();
    const uint32_t codes = 1u << format_bits(f);
    for (int64_t i = 0; i < q.packed.numel(); ++i) {
      uint32_t w = 0;
      for (int64_t j = 0; j < P; ++j) {
        uint32_t code = static_cast<uint32_t>(i * P + j + i / 7) % codes;
        // FP8: exponents 0-3 only, so that the subnormals (exponent 0) weigh as much as the
        // normals beside them (the random-weight tests cover the large normals).
        if (f == QuantFormat::fp8_e4m3) code &= 0x9f;
        w |= code << (j * format_bits(f));
      }
      words[i] = w;
    }
    uint16_t* scales = static_cast<uint16_t*>(q.scales.data_ptr());
    for (int64_t i = 0; i < q.scales.numel(); ++i) scales[i] = 0x3c00;  // f16 1.0
    for (int64_t M = 1; M <= 4; ++M) {
      const Tensor A = random_tensor({M, K}, DType::f32, 12 + M);
      Tensor C = Tensor::empty({M, N}, DType::f32);
      cpu::gemm_q(A, q, {}, C);
      EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(dequantize_cpu(q)), K, N)), 1e-5)
          << format_name(f) << " M=" << M;
    }
  }
}

// The dense decode path (lm_head): every weight dtype, M 1..4, odd K and N, with and without
// bias, against float64.
TEST(GemmCpu, DenseDecodePathMatchesFloat64) {
  testing::PoisonScope poison;
  int i = 0;
  for (DType wt : {DType::f32, DType::f16, DType::bf16})
    for (int64_t K : {1, 7, 130})
      for (int64_t N : {1, 16, 33, 1000})
        for (int64_t M = 1; M <= 4; ++M, ++i) {
          const Tensor A = random_tensor({M, K}, DType::f32, 8000 + i);
          const Tensor B = random_tensor({K, N}, wt, 9000 + i, 0.1f);
          const Tensor bias = i % 3 == 0 ? random_tensor({N}, DType::f32, 10000 + i) : Tensor();
          Tensor C = Tensor::empty({M, N}, DType::f32);
          cpu::gemm(A, B, bias, C);
          EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(B), K, N, bias)), 1e-5)
              << dtype_name(wt) << " M=" << M << " K=" << K << " N=" << N;
          if (wt == DType::f32) continue;
          const Tensor A16 = A.to(wt);
          const Tensor C16 = ops::gemm(A16, B);
          EXPECT_LT(relative_error(to_double(C16), reference_gemm(A16, to_double(B), K, N)),
                    wt == DType::f16 ? 1e-3 : 6e-3);
        }
}

TEST(GemmCpu, DenseBaselineMatchesFloat64) {
  Tensor A = random_tensor({5, 96}, DType::f16, 3);
  Tensor B = random_tensor({96, 33}, DType::f16, 4, 0.1f);
  Tensor C = ops::gemm(A, B);
  EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(B), 96, 33)), 1e-3);
}

TEST(DispatchGemm, OriginalApiOnCpu) {
  KernelLibrary lib(Device::cpu());
  const int64_t M = 3, K = 256, N = 40;
  Tensor W = random_tensor({K, N}, DType::f32, 9, 0.05f);
  QuantizedWeight q4 = ops::quantize(W, QuantFormat::fp4_e2m1, {.group_size = 32});
  Tensor A = random_tensor({M, K}, DType::f16, 10);
  Tensor C = dispatch_gemm_fp4(lib, A, q4.packed, q4.scales, M, N, K);  // default group 32
  EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(dequantize_cpu(q4)), K, N)), 1e-3);
  QuantizedWeight q8 = ops::quantize(W, QuantFormat::fp8_e4m3, {.group_size = 128});
  C = dispatch_gemm_fp8(lib, A, q8.packed, q8.scales, M, N, K);
  EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(dequantize_cpu(q8)), K, N)), 1e-3);
  QuantizedWeight q2 = ops::quantize(W, QuantFormat::int2, {.group_size = 128});
  C = dispatch_gemm_int2(lib, A, q2.packed, q2.scales, M, N, K);
  EXPECT_LT(relative_error(to_double(C), reference_gemm(A, to_double(dequantize_cpu(q2)), K, N)), 1e-3);
  Tensor D = dispatch_dequant_fp4(lib, q4.packed, q4.scales, K, N);
  EXPECT_EQ(D.dtype(), DType::f16);
  EXPECT_EQ(D.to_float_vector(), dequantize_cpu(q4, DType::f16).to_float_vector());
}

TEST(DispatchGemm, BadArgumentsAreClearErrors) {
  KernelLibrary lib(Device::cpu());
  const int64_t M = 2, K = 128, N = 16;
  QuantizedWeight q = ops::quantize(random_tensor({K, N}, DType::f32, 1), QuantFormat::fp4_e2m1, {.group_size = 32});
  Tensor A = random_tensor({M, K}, DType::f16, 2);
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("dispatch_gemm_fp4"), std::string::npos) << e.what();
    }
  };
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed, q.scales, M, N, K, 64); }, "scales must be");
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed, q.scales, M + 1, N, K); }, "[3, 128]");
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed, q.scales, M, N + 1, K); }, "N=17");
  expect_error([&] { dispatch_gemm_fp4(lib, A.to(DType::f32), q.packed, q.scales, M, N, K); }, "f16 or bf16");
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed, q.scales, M, N, K, 32, random_tensor({N + 1}, DType::f16, 3)); }, "bias");
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed.view_as(DType::i32), q.scales, M, N, K); }, "u32");
  Tensor wide = random_tensor({M, 2 * K}, DType::f16, 4).narrow(1, 0, K);  // non-contiguous
  expect_error([&] { dispatch_gemm_fp4(lib, wide, q.packed, q.scales, M, N, K); }, "contiguous");
  expect_error([&] { dispatch_gemm_fp4(lib, A, q.packed, q.scales, M, N, 100, 32); }, "K=100");
  if (cuda_available()) {
    Tensor A_gpu = A.to(Device::cuda(0));
    expect_error([&] { dispatch_gemm_fp4(lib, A_gpu, q.packed, q.scales, M, N, K); }, "cuda:0");
  }
}

TEST(BenchmarkDequant, ReportsPositiveRates) {
  KernelLibrary lib(Device::cpu());
  DequantBenchmarkResult r = benchmark_dequant_fp4(lib, 64 * 1024, 32, 1, 3);
  EXPECT_GT(r.time_ms, 0.0);
  EXPECT_GT(r.bandwidth_gb_s, 0.0);
  EXPECT_GT(r.throughput_gop_s, 0.0);
  EXPECT_THROW(benchmark_dequant_fp4(lib, 0), Error);
}

}  // namespace
}  // namespace marlin
