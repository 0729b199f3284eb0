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

// The K splits of a one-wave tile-layout launch (gemm_q_mma.cu, gemm_q_batch.cu): as many as
// `capacity` resident blocks allow over `column_blocks` column blocks, each split whole rounds of
// kUnitsAlign units, and the partials (splits x M x N floats, written and read once) at most
// about half the weight's bytes. (Measured on H200: more, shorter splits in several waves were
// slower at M = 1, and their partials cost too much at M = 32-64.)
struct TiledSplits {
  int splits;
  int units_per_split;
};
TiledSplits plan_tiled_splits(int M, int K, int bits, int units, int capacity, int column_blocks);

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

  // Sums the partials of column quads [col_begin, col_end) (N a multiple of 4) in split order:
  // kItems quads a thread at a time, kBatch splits' loads of each in flight.
  template <int kItems, int kBatch>
  __device__ void reduce_quads(int col_begin, int col_end, int rows) const {
    const int quads = (col_end - col_begin + 3) / 4, items = rows * quads;
    const int64_t split_stride = static_cast<int64_t>(M) * N;
    const unsigned splits = gridDim.y;
    for (int base = threadIdx.x; base < items; base += blockDim.x * kItems) {
      float4 v[kItems];
      const float* p[kItems];
      bool valid[kItems];
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        v[it] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const int i = base + it * static_cast<int>(blockDim.x);
        valid[it] = i < items;
        p[it] = partials + static_cast<int64_t>(i / quads) * N + col_begin + 4 * (i % quads);
      }
      for (unsigned s = 0; s < splits; s += kBatch) {
        float4 part[kItems][kBatch];
#pragma unroll
        for (int it = 0; it < kItems; ++it)
#pragma unroll
          for (int j = 0; j < kBatch; ++j)
            part[it][j] = valid[it] && s + j < splits
                              ? __ldcg(reinterpret_cast<const float4*>(p[it] + (s + j) * split_stride))
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int it = 0; it < kItems; ++it)
#pragma unroll
          for (int j = 0; j < kBatch; ++j) {
            v[it].x += part[it][j].x;
            v[it].y += part[it][j].y;
            v[it].z += part[it][j].z;
            v[it].w += part[it][j].w;
          }
      }
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        if (!valid[it]) break;
        const int i = base + it * static_cast<int>(blockDim.x);
        const int row = i / quads, col = col_begin + 4 * (i % quads);
        const float out[4] = {v[it].x, v[it].y, v[it].z, v[it].w};
        T* c = C + static_cast<int64_t>(row) * N + col;
        for (int j = 0; j < 4 && col + j < col_end; ++j) c[j] = from_float<T>(out[j] + load_bias(bias, bias_kind, col + j));
      }
    }
  }

  // Called by every thread of the block after its stores: the last block of this blockIdx.x
  // sums the partials of columns [col_begin, col_end) and rows [0, min(rows, M)).
  template <bool kWide = false>
  __device__ void reduce_if_last(int col_begin, int col_end, int rows) const {
    if (!arrive_last(&counters[blockIdx.x], gridDim.y)) return;
    rows = min(rows, M);
    const int width = col_end - col_begin;
    // Eight splits' loads in flight at a time (an L2 round trip each): a serial chain of
    // dependent loads made this reduction the cost of small shapes.
    const int64_t split_stride = static_cast<int64_t>(M) * N;
    const unsigned splits = gridDim.y;
    if constexpr (kWide) {
      // Many rows (M > 16): 16 loads in flight a thread, 2 column quads x 8 splits or 4 x 4
      // where there are few splits (M = 64 with 4 splits read its partials one round trip at
      // a time). Only for the kernels with registers to spare: the skinny kernel's occupancy
      // fell with it (48 -> 80 registers) and GLM-4.7-Flash decoded 2% slower.
      if (N % 4 == 0 && col_begin % 4 == 0) {
        if (splits >= 8) reduce_quads<2, 8>(col_begin, col_end, rows);
        else reduce_quads<4, 4>(col_begin, col_end, rows);
        return;
      }
    }
    if (N % 4 == 0 && col_begin % 4 == 0) {
      // Four columns per load: a quarter of the round trips (M > 1 has many rows to sum).
      const int quads = (width + 3) / 4;
      for (int i = threadIdx.x; i < rows * quads; i += blockDim.x) {
        const int row = i / quads, col = col_begin + 4 * (i % quads);
        const float* p = partials + static_cast<int64_t>(row) * N + col;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        unsigned s = 0;
        for (; s + 8 <= splits; s += 8) {
          float4 part[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) part[j] = __ldcg(reinterpret_cast<const float4*>(p + (s + j) * split_stride));
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            v.x += part[j].x;
            v.y += part[j].y;
            v.z += part[j].z;
            v.w += part[j].w;
          }
        }
        for (; s < splits; ++s) {
          const float4 part = __ldcg(reinterpret_cast<const float4*>(p + s * split_stride));
          v.x += part.x;
          v.y += part.y;
          v.z += part.z;
          v.w += part.w;
        }
        const float out[4] = {v.x, v.y, v.z, v.w};
        T* c = C + static_cast<int64_t>(row) * N + col;
        for (int j = 0; j < 4 && col + j < col_end; ++j) c[j] = from_float<T>(out[j] + load_bias(bias, bias_kind, col + j));
      }
      return;
    }
    for (int i = threadIdx.x; i < rows * width; i += blockDim.x) {
      const int row = i / width, col = col_begin + i % width;
      const float* p = partials + static_cast<int64_t>(row) * N + col;
      float v = 0.0f;
      unsigned s = 0;
      for (; s + 8 <= splits; s += 8) {
        float part[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) part[j] = __ldcg(p + (s + j) * split_stride);
#pragma unroll
        for (int j = 0; j < 8; ++j) v += part[j];
      }
      for (; s < splits; ++s) v += __ldcg(p + s * split_stride);
      C[static_cast<int64_t>(row) * N + col] = from_float<T>(v + load_bias(bias, bias_kind, col));
    }
  }
};

}  // namespace marlin::cuda
