// CUDA backend of the MoE paths (moe_routing.cu, moe_decode.cu, moe_grouped.cu). Experts are
// reached through a device table of weight pointers, so the chosen experts' ids never leave the
// GPU. Arguments are checked by the callers (ops/moe_ops.cpp, nn/moe_layer.cpp).
#pragma once

#include <cstdint>

#include "kernels/moe_routing_common.h"
#include "marlin/tensor.h"

namespace marlin::cuda {

// One quantized matrix W [K, N] in the canonical layout (DESIGN.md).
struct MoeMatrix {
  const uint32_t* packed = nullptr;  // [K / P, N]
  const void* scales = nullptr;      // f16 [K / group_size, N]
  int32_t bits = 4;                  // 2 (INT2), 4 (FP4 E2M1), 8 (FP8 E4M3)
  int32_t group_size = 128;
  int32_t K = 0, N = 0;
};

// A SwiGLU expert: gate and up [H, I] (same bits and group size), down [I, H].
struct MoeExpertMatrices {
  MoeMatrix gate, up, down;
};

// The table the kernels read: experts 0..E-1, then the shared experts (if any) at index E.
struct MoeKernelPlan {
  Tensor table;  // u8 on the device: MoeExpertMatrices[num_experts + has_shared]
  int num_experts = 0;
  bool has_shared = false;
  int hidden = 0;            // H
  int max_intermediate = 0;  // largest I over the table
  bool vector4 = false;      // every N % 4 == 0 and packed rows 16-byte aligned: 16-byte loads
  bool tensor_cores = false; // every N % 8 == 0, packed and scales 16-byte aligned: mma decode
};

// ids i32 [T, k], weights f32 [T, k] from logits f32 [T, E]; bias f32 [E] or undefined.
void moe_route(const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
               const Tensor& ids, const Tensor& weights);

// logits f32 [T, E] = x [T, H] (f16/bf16) @ router_weight f32 [E, H]^T, each optionally rounded
// to x's dtype (E is router_weight's); when ids/weights are defined, the last block of each token
// routes it too (one launch for logits and routing), and only then are params and bias read.
void moe_router(const Tensor& x, const Tensor& router_weight, bool round_logits,
                const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
                const Tensor& ids, const Tensor& weights);

// moe_router on norm(residual + x) with the add and the norm in its launch (MoE::forward_add_norm):
// residual [T, H] += x (in place), normed [T, H] = RMSNorm(residual; norm_weight, eps), the
// values add_rms_norm computes, and the routing of normed. Takes 16-bit rows of at most 2048
// values, a multiple of 8, with a weight of their dtype (moe_router_add_norm_fits).
bool moe_router_add_norm_fits(const Tensor& x, const Tensor& norm_weight);
void moe_router_add_norm(const Tensor& residual, const Tensor& x, const Tensor& norm_weight, float eps,
                         const Tensor& normed, const Tensor& router_weight, bool round_logits,
                         const Tensor& logits, const Tensor& bias, const moe::RouteParams& params,
                         const Tensor& ids, const Tensor& weights);

// T tokens (1 <= T <= kMoeDecodeMaxTokens; T > 1 only when plan.tensor_cores): out [T, H] =
// sum_j weights[t, j] * expert_{ids[t, j]}(x[t]) + shared(x[t]), with ids/weights [T, k] on the
// device (from moe_router). Two launches (gate/up + SwiGLU, down + combine), on the tensor cores
// when plan.tensor_cores (moe_decode_mma.cu), else on the CUDA cores. Each token is computed as
// it would be alone: its experts' weights are read once per token, which for a few tokens (a
// batch of decode steps) beats grouping them by expert (moe_grouped_experts).
constexpr int kMoeDecodeMaxTokens = 16;
void moe_decode_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                        const MoeKernelPlan& plan, const Tensor& out);
// Whether moe_decode_experts takes T tokens with this plan (MARLIN_MOE_GROUPED=1: never for T > 1,
// to measure the grouped kernels against).
bool moe_decode_takes(const MoeKernelPlan& plan, int64_t T);
// Whether the expert kernels (decode and grouped) take the tensor cores: plan.tensor_cores, unless
// set_force_cuda_core_moe(true) (tests) or MARLIN_MOE_CUDA_CORES=1 (to measure both paths).
bool moe_tensor_cores(const MoeKernelPlan& plan);
void set_force_cuda_core_moe(bool on);

// T tokens: rows grouped by expert on the device, one grouped GEMM launch for gate/up + SwiGLU
// over all experts (and the shared experts), one for down, then the weighted combine; on the
// tensor cores when moe_tensor_cores(plan) (moe_grouped_mma.cu), else FMA tiles.
void moe_grouped_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                         const MoeKernelPlan& plan, const Tensor& out);

}  // namespace marlin::cuda
