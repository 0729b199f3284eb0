// Split-K for the GEMM kernels: blocks that share output columns but cover different K ranges
// write f32 partial sums; the last of them to finish (an arrival counter per column range) sums
// the partials in split order and writes C. One launch, deterministic results.
#pragma once

#include "kernels/cuda/device_utils.cuh"

namespace marlin::cuda {

struct SplitKBuffers {
  float* partials = nullptr;   // [splits, M, N]
  unsigned* counters = nullptr;  // one per blockIdx.x, zero between launches
};

// Per-device scratch, grown on demand (nullptrs when splits == 1).
SplitKBuffers split_k_buffers(int device, int splits, int M, int N, int column_blocks);

template <typename T>
struct SplitKEpilogue {
  T* C;
  float* partials;
  unsigned* counters;
  const void* bias;
  BiasKind bias_kind;
  int M, N;

  __device__ __forceinline__ void store(int row, int col, float v, bool split) const {
    if (row >= M || col >= N) return;
    if (!split) {
      C[static_cast<int64_t>(row) * N + col] = from_float<T>(v + load_bias(bias, bias_kind, col));
    } else {
      partials[(static_cast<int64_t>(blockIdx.y) * M + row) * N + col] = v;
    }
  }

  // Called by every thread of the block after its stores: the last block of this blockIdx.x
  // sums the partials of columns [col_begin, col_end) and rows [0, min(rows, M)).
  __device__ void reduce_if_last(int col_begin, int col_end, int rows) const {
    __shared__ bool is_last_block;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last_block = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!is_last_block) return;
    __threadfence();
    rows = min(rows, M);
    const int width = col_end - col_begin;
    for (int i = threadIdx.x; i < rows * width; i += blockDim.x) {
      const int row = i / width, col = col_begin + i % width;
      float v = 0.0f;
      for (unsigned s = 0; s < gridDim.y; ++s)
        v += __ldcg(partials + (static_cast<int64_t>(s) * M + row) * N + col);
      C[static_cast<int64_t>(row) * N + col] = from_float<T>(v + load_bias(bias, bias_kind, col));
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next launch
  }
};

}  // namespace marlin::cuda
