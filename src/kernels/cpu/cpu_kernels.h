// CPU backend of the ops: the reference every CUDA kernel is tested against. Arguments are
// already checked by ops/.
#pragma once

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::cpu {

// C[M, N] = A[M, K] @ dequant(W) (+ bias); C is preallocated with A's dtype.
void gemm_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C);
// The decode-size path of gemm_q (M <= 4; AVX-512, or AVX2 with N a multiple of 8): decodes
// each packed word once straight into FMAs. Returns false where it does not apply.
bool gemv_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C);
// The decode-size path of gemm (M <= 4, AVX-512): B streamed row by row in address order.
// Returns false where it does not apply.
bool gemv(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C);
// C[M, N] = A[M, K] @ B[K, N] (+ bias) with B in f16, bf16 or f32.
void gemm(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C);

// out (contiguous f32/f16/bf16) = stddev * N(0, 1) from the counter-based generator.
void random_normal(Tensor& out, uint64_t seed, float stddev);

}  // namespace marlin::cpu
