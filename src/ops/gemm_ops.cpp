// ops::gemm_q / ops::gemm: the argument checks shared by every backend, then dispatch.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "marlin/ops.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace marlin::ops {
namespace {

void check_activations(const char* op, const Tensor& A, int64_t K) {
  MARLIN_CHECK(A.defined() && A.dim() == 2, op, "A must be 2-D [M, K], got ",
               A.defined() ? A.describe() : "an undefined tensor");
  MARLIN_CHECK(A.dtype() == DType::f16 || A.dtype() == DType::bf16, op,
               "A must be f16 or bf16, got ", A.describe());
  MARLIN_CHECK(A.size(0) >= 1, op, "A must have at least one row, got ", A.describe());
  MARLIN_CHECK(A.size(1) == K, op, "A has K=", A.size(1), " columns but the weight has K=", K,
               " rows (A ", A.describe(), ")");
  MARLIN_CHECK(A.is_contiguous(), op, "A must be contiguous, got ", A.describe());
}

void check_bias(const char* op, const Tensor& bias, int64_t N, Device device) {
  if (!bias.defined()) return;
  MARLIN_CHECK(bias.dim() == 1 && bias.size(0) == N, op, "bias must be [N] = [", N, "], got ",
               bias.describe());
  MARLIN_CHECK(bias.dtype() == DType::f16 || bias.dtype() == DType::bf16 ||
                   bias.dtype() == DType::f32,
               op, "bias must be f16, bf16 or f32, got ", bias.describe());
  MARLIN_CHECK(bias.is_contiguous(), op, "bias must be contiguous, got ", bias.describe());
  MARLIN_CHECK(bias.device() == device, op, "bias on ", bias.device().str(),
               " but the weights on ", device.str());
}

}  // namespace

void prepare_for_gemm(QuantizedWeight& W) {
  check_quantized_layout("prepare_for_gemm", W.packed, W.scales, W.format, W.K, W.N, W.group_size);
  if (!W.device().is_cuda() || W.tiled.defined()) return;
#ifdef MARLIN_WITH_CUDA
  // The kernel multiplies decoded codes by the scale times a power of two in fp16: weights
  // whose scales would overflow that keep the canonical-layout kernels.
  float max_abs_scale = 0.0f;
  for (float s : W.scales.to_float_vector()) max_abs_scale = std::max(max_abs_scale, std::fabs(s));
  if (cuda::mma_supported(W, max_abs_scale)) W.tiled = cuda::repack_tiled(W);
#endif
}

Tensor gemm_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias) {
  constexpr const char* op = "gemm_q";
  check_quantized_layout(op, W.packed, W.scales, W.format, W.K, W.N, W.group_size);
  check_activations(op, A, W.K);
  MARLIN_CHECK(A.device() == W.device(), op, "A on ", A.device().str(), " but the weights on ",
               W.device().str());
  check_bias(op, bias, W.N, W.device());
  Tensor C = Tensor::empty({A.size(0), W.N}, A.dtype(), A.device());
  if (A.device().is_cpu()) {
    cpu::gemm_q(A, W, bias, C);
    return C;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::gemm_q(A, W, bias, C);
  return C;
#else
  fail(op, "tensors are on ", A.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor gemm(const Tensor& A, const Tensor& B, const Tensor& bias) {
  constexpr const char* op = "gemm";
  MARLIN_CHECK(B.defined() && B.dim() == 2, op, "B must be 2-D [K, N], got ",
               B.defined() ? B.describe() : "an undefined tensor");
  MARLIN_CHECK(B.dtype() == A.dtype(), op, "B must have A's dtype, got A ", A.describe(), " and B ",
               B.describe());
  MARLIN_CHECK(B.is_contiguous(), op, "B must be contiguous, got ", B.describe());
  check_activations(op, A, B.size(0));
  MARLIN_CHECK(A.device() == B.device(), op, "A on ", A.device().str(), " but B on ",
               B.device().str());
  check_bias(op, bias, B.size(1), B.device());
  Tensor C = Tensor::empty({A.size(0), B.size(1)}, A.dtype(), A.device());
  if (A.device().is_cpu()) {
    cpu::gemm(A, B, bias, C);
    return C;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::gemm(A, B, bias, C);
  return C;
#else
  fail(op, "tensors are on ", A.device().str(), " but this build has no CUDA backend");
#endif
}

}  // namespace marlin::ops
