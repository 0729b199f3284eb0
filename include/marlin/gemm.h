// The original API's quantized GEMM and dequant entry points, over the canonical layout.
// A [M, K] f16 or bf16; B_packed u32 [K/P, N]; scales f16 [K/group_size, N]; all on one device
// (the tensors' device picks the backend; `lib` supplies the stream on CUDA).
#pragma once

#include <cstdint>

#include "marlin/kernel_library.h"
#include "marlin/tensor.h"

namespace marlin {

Tensor dispatch_gemm_fp4(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                         const Tensor& scales, int64_t M, int64_t N, int64_t K,
                         int group_size = 32, const Tensor& bias = {});
Tensor dispatch_gemm_fp8(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                         const Tensor& scales, int64_t M, int64_t N, int64_t K,
                         int group_size = 128, const Tensor& bias = {});
Tensor dispatch_gemm_int2(KernelLibrary& lib, const Tensor& A, const Tensor& B_packed,
                          const Tensor& scales, int64_t M, int64_t N, int64_t K,
                          int group_size = 128, const Tensor& bias = {});

// [K, N] f16.
Tensor dispatch_dequant_fp4(KernelLibrary& lib, const Tensor& packed, const Tensor& scales,
                            int64_t K, int64_t N, int group_size = 32);

struct DequantBenchmarkResult {
  double time_ms = 0;          // median time of one dequant
  double bandwidth_gb_s = 0;   // bytes read (packed + scales) plus written (f16), per second
  double throughput_gop_s = 0; // dequantized values per second, in billions
};
// Times dispatch_dequant_fp4 on `num_packed` random packed words on the library's device.
DequantBenchmarkResult benchmark_dequant_fp4(KernelLibrary& lib,
                                             int64_t num_packed = 16 * 1024 * 1024,
                                             int group_size = 32, int warmup_iters = 10,
                                             int benchmark_iters = 100);

}  // namespace marlin
