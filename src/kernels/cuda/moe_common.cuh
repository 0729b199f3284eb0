// Shared pieces of the MoE CUDA kernels: code -> float decoding of the three formats and the
// 16-byte streaming loads (quant_codec.cuh, shared with gemm_q.cu), and the format switch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/moe_kernels_cuda.h"
#include "kernels/cuda/quant_codec.cuh"
#include "marlin/quant.h"

namespace marlin::cuda::moe_detail {

using quant_detail::Codec;
using quant_detail::decode_word;
using quant_detail::load_words;

// fn(std::integral_constant-like tag) for the matrix's format; one switch for all kernels.
template <QuantFormat F>
struct FormatTag {
  static constexpr QuantFormat value = F;
};

template <typename Fn>
__device__ __forceinline__ void dispatch_format(int bits, Fn&& fn) {
  switch (bits) {
    case 2: fn(FormatTag<QuantFormat::int2>{}); break;
    case 8: fn(FormatTag<QuantFormat::fp8_e4m3>{}); break;
    default: fn(FormatTag<QuantFormat::fp4_e2m1>{}); break;
  }
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

template <typename TA>
__device__ __forceinline__ TA swiglu(float gate, float up) {
  // Transformers: gate and up rounded to the dtype, silu rounded, product rounded.
  const float g = round_to<TA>(gate);
  return from_float<TA>(round_to<TA>(g / (1.0f + expf(-g))) * round_to<TA>(up));
}

// Decode scratch on `device`, grown on demand (moe_decode.cu): split partials, arrival counters
// (left zero by every kernel), and the SwiGLU activations between the two launches.
struct DecodeScratch {
  float* partials;
  unsigned* counters;
  void* act;
};
DecodeScratch decode_scratch(int device, int64_t floats, int64_t counters, int64_t act_bytes);

// A row tile of the grouped paths (moe_grouped.cu): rows [row_begin, row_end) of one group.
struct RowTile {
  int32_t group;  // expert, num_experts for the shared experts, -1 past the last tile
  int32_t row_begin, row_end;
};

}  // namespace marlin::cuda::moe_detail

namespace marlin::cuda {
// One token's experts on the tensor cores (moe_decode_mma.cu); needs plan.tensor_cores.
template <typename TA>
void launch_decode_mma(const Tensor& x, const Tensor& ids, const Tensor& weights,
                       const MoeKernelPlan& plan, const Tensor& out, cudaStream_t stream);

// Rows of a grouped tensor-core tile (moe_grouped_mma.cu): two groups of 8 B columns.
constexpr int kMmaTileRows = 16;
// The grouped experts on the tensor cores (needs plan.tensor_cores): act [rows, Imax] =
// SwiGLU(x[row_token[row]] gate, up), then y [rows, H] = act down, over tiles of kMmaTileRows.
template <typename TA>
void launch_grouped_mma(const TA* x, const int32_t* row_token, const moe_detail::RowTile* tiles, int max_tiles,
                        const MoeKernelPlan& plan, TA* act, TA* y, cudaStream_t stream);
}  // namespace marlin::cuda
