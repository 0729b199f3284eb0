// CUDA backend of the ops (launchers in kernels/cuda/*.cu). Arguments are already checked by
// ops/; every launcher runs on the current stream of the tensors' device and checks the launch.
#pragma once

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::cuda {

// Fills `out` (packed u32 [K/P, N], scales f16 [K/g, N], preallocated on the device).
void quantize(const Tensor& weight, QuantFormat format, const QuantizeOptions& options,
              QuantizedWeight& out);
// out [K, N] in f16, bf16 or f32.
void dequantize(const QuantizedWeight& weight, Tensor& out);
// C[M, N] = A @ dequant(W) (+ bias): a fused split-K kernel for small M, dequant + cuBLAS
// beyond it.
void gemm_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C);
// C = RMSNorm(A; norm_weight, eps) @ W + bias in one launch (A contiguous [M, K]), each row's
// sum of squares taken in the order of rms_norm's vector kernel, so the normalized values are
// those rms_norm writes; false, doing nothing, for more than one row, where gemm_q would not
// take its skinny decode kernel, or where the row does not fit it (then norm and GEMM run apart).
bool gemm_q_rms_normed(const Tensor& A, const Tensor& norm_weight, float eps, const QuantizedWeight& W,
                       const Tensor& bias, Tensor& C);
// C = silu_mul(gate, up) @ W + bias in one launch for one row (gate and up [1, K], each
// contiguous, 16-byte aligned), the same values as the two apart; false, doing nothing, where
// gemm_q would not take the tile-layout stream kernel or the row does not fit it.
bool gemm_q_silu_mul(const Tensor& gate, const Tensor& up, const QuantizedWeight& W, const Tensor& bias,
                     Tensor& C);
// Tensor-core path over W.tiled (gemm_q_mma.cu): the tile layout, whether a weight can use it
// (its largest |scale| keeps the kernels' fp16 scale finite), and the GEMM (the stream,
// batch, per-slab and wgmma kernels), which returns false when it does not apply (no tile
// layout, M > 64 without the wgmma kernel's wide tiles, or a grid too small to pay off).
bool mma_supported(const QuantizedWeight& W, float max_abs_scale);
Tensor repack_tiled(const QuantizedWeight& W);
bool gemm_q_tiled(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C);
// Tests: use the tensor-core kernels even where the canonical or cuBLAS path would be chosen.
void set_force_tiled_gemm(bool on);
// Tests: small decode weights (at most 4 MiB, M <= 8) with a tile layout on the stream kernel
// (true, the default unless MARLIN_SMALL_DECODE_TILED=0) or on the canonical-layout split-K kernel.
void set_small_decode_tiled(bool on);
bool tiled_gemm_forced();
// Tests: 16 < M <= 64 on the per-slab kernel (gemm_q_mma.cu) instead of the batch kernel.
void set_per_slab_gemm(bool on);
// Test hook: the stream kernel's round in stages at M <= 8 (0: chosen per shape, the default).
void set_stream_round_stages(int stages);
// C = A @ B (+ bias) with cuBLAS, B f16/bf16 [K, N] of A's dtype.
void gemm(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C);
// out (contiguous f32/f16/bf16) = stddev * N(0, 1) from the counter-based generator.
void random_normal(Tensor& out, uint64_t seed, float stddev);
// Number of streaming multiprocessors of the device (cached).
int multiprocessor_count(int device);
// Blocks of `kernel` (threads a block, dynamic shared memory bytes) one SM holds, after raising
// the kernel's dynamic shared memory limit to `smem_bytes`; at least 1. Callers ask once per
// kernel and keep the answer (it depends on the kernel and the GPU model only).
int resident_blocks_per_sm(const void* kernel, int threads, int smem_bytes);
// Zeroed arrival counters (every kernel that counts on them leaves them zero), at least n, one
// buffer per kind of kernel and device: grown on demand, never shrunk, so a captured CUDA graph
// keeps their address. Kinds apart, so no two kernels of a chain share a counter.
enum class CounterUser { gqa_decode, moe_router };
unsigned* arrival_counters(CounterUser user, int device, int64_t n);

}  // namespace marlin::cuda
