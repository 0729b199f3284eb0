// The original API's entry points (dispatch_gemm_fp4/fp8/int2, dispatch_dequant_fp4,
// benchmark_dequant_fp4): check M/N/K against the tensors, then run the ops on lib's stream.
#include <random>

#include "marlin/gemm.h"
#include "marlin/ops.h"
#include "marlin/timing.h"

namespace marlin {
namespace {

// Work on the library's CUDA device runs on the library's stream.
bool on_library_device(KernelLibrary& lib, Device device) {
  return device.is_cuda() && lib.device() == device;
}

QuantizedWeight as_weight(const char* op, const Tensor& packed, const Tensor& scales,
                          QuantFormat format, int64_t K, int64_t N, int group_size) {
  check_quantized_layout(op, packed, scales, format, K, N, group_size);
  QuantizedWeight w;
  w.packed = packed;
  w.scales = scales;
  w.format = format;
  w.group_size = group_size;
  w.K = K;
  w.N = N;
  return w;
}

Tensor dispatch_gemm(const char* op, QuantFormat format, KernelLibrary& lib, const Tensor& A,
                     const Tensor& packed, const Tensor& scales, int64_t M, int64_t N, int64_t K,
                     int group_size, const Tensor& bias) {
  const QuantizedWeight w = as_weight(op, packed, scales, format, K, N, group_size);
  MARLIN_CHECK(A.defined() && A.dim() == 2 && A.size(0) == M && A.size(1) == K, op,
               "A must be [M, K] = ", shape_str({M, K}), ", got ",
               A.defined() ? A.describe() : "an undefined tensor");
  StreamGuard guard(lib.stream(), on_library_device(lib, A.device()));
  try {
    return ops::gemm_q(A, w, bias);
  } catch (const Error& e) {
    throw Error(op, e.what());
  }
}

}  // namespace

Tensor dispatch_gemm_fp4(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                         const Tensor& scales, int64_t M, int64_t N, int64_t K, int group_size,
                         const Tensor& bias) {
  return dispatch_gemm("dispatch_gemm_fp4", QuantFormat::fp4_e2m1, lib, A, B_packed, scales, M,
                       N, K, group_size, bias);
}

Tensor dispatch_gemm_fp8(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                         const Tensor& scales, int64_t M, int64_t N, int64_t K, int group_size,
                         const Tensor& bias) {
  return dispatch_gemm("dispatch_gemm_fp8", QuantFormat::fp8_e4m3, lib, A, B_packed, scales, M,
                       N, K, group_size, bias);
}

Tensor dispatch_gemm_int2(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                          const Tensor& scales, int64_t M, int64_t N, int64_t K, int group_size,
                          const Tensor& bias) {
  return dispatch_gemm("dispatch_gemm_int2", QuantFormat::int2, lib, A, B_packed, scales, M, N,
                       K, group_size, bias);
}

Tensor dispatch_dequant_fp4(KernelLibrary& lib, const Tensor& packed, const Tensor& scales,
                            int64_t K, int64_t N, int group_size) {
  const QuantizedWeight w =
      as_weight("dispatch_dequant_fp4", packed, scales, QuantFormat::fp4_e2m1, K, N, group_size);
  StreamGuard guard(lib.stream(), on_library_device(lib, packed.device()));
  return ops::dequantize(w, DType::f16);
}

DequantBenchmarkResult benchmark_dequant_fp4(KernelLibrary& lib, int64_t num_packed,
                                             int group_size, int warmup_iters,
                                             int benchmark_iters) {
  constexpr const char* op = "benchmark_dequant_fp4";
  MARLIN_CHECK(num_packed > 0 && warmup_iters >= 0 && benchmark_iters > 0, op,
               "num_packed=", num_packed, ", warmup_iters=", warmup_iters,
               ", benchmark_iters=", benchmark_iters, " must be positive");
  MARLIN_CHECK(is_valid_group_size(group_size), op, "group_size=", group_size,
               " is not supported (32, 64, 128 or 256)");
  // A [K, N] weight with N = 4096 columns, K rounded up to whole groups.
  const int64_t N = 4096;
  int64_t K = (num_packed + N - 1) / N * 8;
  K = (K + group_size - 1) / group_size * group_size;
  std::mt19937 rng(1234);
  Tensor packed = Tensor::empty({K / 8, N}, DType::u32);
  for (int64_t i = 0; i < packed.numel(); ++i) packed.data<uint32_t>()[i] = rng();
  Tensor scales = Tensor::empty({K / group_size, N}, DType::f16);
  std::uniform_real_distribution<float> dist(0.001f, 0.1f);
  for (int64_t i = 0; i < scales.numel(); ++i)
    static_cast<uint16_t*>(scales.data_ptr())[i] = float_to_half_bits(dist(rng));
  packed = packed.to(lib.device());
  scales = scales.to(lib.device());
  StreamGuard guard(lib.stream(), on_library_device(lib, lib.device()));
  const double ms = median(time_runs(lib.device(), warmup_iters, benchmark_iters, [&] {
    dispatch_dequant_fp4(lib, packed, scales, K, N, group_size);
  }));
  const double bytes = static_cast<double>(packed.nbytes() + scales.nbytes() + K * N * 2);
  DequantBenchmarkResult r;
  r.time_ms = ms;
  r.bandwidth_gb_s = bytes / (ms * 1e-3) / 1e9;
  r.throughput_gop_s = static_cast<double>(K * N) / (ms * 1e-3) / 1e9;
  return r;
}

}  // namespace marlin
