// The device-dispatching op API that layers call: arguments are checked once here, then the
// CPU or CUDA backend runs, chosen by the tensors' device.
#pragma once

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::ops {

// Quantizes weight [K, N] (f32, f16 or bf16) on its own device.
QuantizedWeight quantize(const Tensor& weight, QuantFormat format,
                         const QuantizeOptions& options = {});
// Dequantizes to [K, N] in f16, bf16 or f32 on the weight's device.
Tensor dequantize(const QuantizedWeight& weight, DType out_dtype = DType::f16);

// Repacks W once into the device's tile layout (W.tiled) so gemm_q can use the tensor-core
// kernel; a no-op on the CPU or where the kernel does not apply (then gemm_q uses the canonical
// layout). Plan-then-run: do it at load time, never per call.
void prepare_for_gemm(QuantizedWeight& weight);

// C[M, N] = A[M, K] @ dequant(W) (+ bias[N]). A is f16 or bf16, C has A's dtype; bias is
// f16, bf16 or f32. All tensors on one device. Accumulates in f32.
Tensor gemm_q(const Tensor& A, const QuantizedWeight& weight, const Tensor& bias = {});

// C[M, N] = A[M, K] @ B[K, N] for unquantized f16/bf16 weights (cuBLAS on CUDA): the baseline.
Tensor gemm(const Tensor& A, const Tensor& B, const Tensor& bias = {});

// Values ~ N(0, stddev^2) in a float dtype, made on `device` from a counter-based generator:
// the same seed gives the same tensor at any thread count.
Tensor random_normal(const Shape& shape, DType dtype, Device device, uint64_t seed,
                     float stddev = 1.0f);

}  // namespace marlin::ops
