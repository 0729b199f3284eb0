// What the flash-decoding kernels (attention_decode.cu for GQA, mla_attention.cu for MLA) share:
// the online-softmax update of one key, the merge of a block's warp states, and the merge of the
// splits' partial states. A state is (m, l, acc): the running max score, the sum of exp(s - m)
// and the exp-weighted sum of values; a split with no visible key has m = -inf.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/pdl.cuh"

namespace marlin::cuda {

// One key of score s (the same in every lane) and values v (this lane's dims) into a state.
template <int N>
__device__ __forceinline__ void online_softmax_update(float s, float& m, float& l, float (&acc)[N],
                                                      const float (&v)[N]) {
  if (s > m) {  // warp-uniform: s is the same in every lane
    const float c = __expf(m - s);
    l *= c;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] *= c;
    m = s;
  }
  const float p = __expf(s - m);
  l += p;
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] += p * v[i];
}

// The kWarps warp states of a block in shared memory (s_m, s_l [kWarps][kG]; s_acc
// [kWarps][kG][acc_stride]) merged for heads g < ng and dims d < D, then written: the output rows
// row0 + g when the block is the row's only split, else the split's partial state.
template <int kWarps, int kG, typename T>
__device__ __forceinline__ void write_block_state(const float (*s_m)[kG], const float (*s_l)[kG],
                                                  const float* s_acc, int acc_stride, int ng, int D,
                                                  int64_t row0, int splits, int split, T* out,
                                                  float* part_o, float2* part_ml) {
  for (int idx = threadIdx.x; idx < ng * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float c = __expf(s_m[w][g] - M);
        L += s_l[w][g] * c;
        O += s_acc[(w * kG + g) * acc_stride + d] * c;
      }
    }
    if (splits == 1) {
      out[(row0 + g) * D + d] = from_float<T>(O / L);
    } else {
      const int64_t part = (row0 + g) * splits + split;
      part_o[part * D + d] = O;
      if (d == 0) part_ml[part] = make_float2(M, L);
    }
  }
}

// out[row] = the merge of the row's split states; a row whose splits all saw no key is zero.
// Block (row, chunk) merges dims chunk * blockDim.x + threadIdx.x: a latent row of 512 values
// over 53 splits (GLM-4.7-Flash with a 32k cache) is 4 blocks' work, not one's. The loads of
// the splits have no branch between them (a split with no key is selected out, its unwritten
// sums never used), so they are in flight together.
template <typename T>
__global__ void flash_merge_kernel(const float* __restrict__ part_o, const float2* __restrict__ part_ml,
                                   T* __restrict__ out, int splits, int D) {
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  pdl_wait();               // when launched as a programmatic dependent: the split kernel's parts
  const int64_t row = blockIdx.x;
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  const float2* ml = part_ml + row * splits;
  float M = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) M = fmaxf(M, ml[s].x);
  if (d >= D) return;
  float L = 0.0f, O = 0.0f;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) {
    const float2 state = ml[s];
    const float o = part_o[(row * splits + s) * D + d];
    const bool seen = state.x != -INFINITY;
    const float c = seen ? __expf(state.x - M) : 0.0f;
    L += seen ? state.y * c : 0.0f;
    O += seen ? o * c : 0.0f;
  }
  out[row * D + d] = from_float<T>(L > 0.0f ? O / L : 0.0f);
}

// The merge's launch shape for rows of D values.
inline dim3 flash_merge_block(int D) { return dim3(D < 128 ? D : 128); }
inline dim3 flash_merge_grid(int64_t rows, int D) {
  const unsigned block = flash_merge_block(D).x;
  return dim3(static_cast<unsigned>(rows), (static_cast<unsigned>(D) + block - 1) / block);
}

}  // namespace marlin::cuda
