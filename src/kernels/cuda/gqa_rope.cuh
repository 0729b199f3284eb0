// What the one-launch GQA decode kernels share (attention_decode_rope.cu: splits merged through
// global memory; attention_decode_cluster.cu: splits merged through a thread-block cluster's
// shared memory): the step's new token and the rotation of one head by a warp.
#pragma once

#include <cstdint>

#include "kernels/cuda/gqa_decode.cuh"
#include "kernels/cuda/nn_common.cuh"
#include "marlin/tensor.h"

namespace marlin::cuda::gqa {

// The step's new token: q [B, Hq, D], k and v [B, Hkv, D] with any token and head strides (head
// views of the fused QKV output), and what RoPE needs.
template <typename T>
struct NewToken {
  const T* q;
  const T* k;
  const T* v;
  int64_t q_token, q_head, k_token, k_head, v_token, v_head;
  const int* positions;  // [B], the rotation angle's position
  const float* inv_freq;  // [half]
  int half;
  bool interleaved;
  float attention_factor;
};

template <typename T>
NewToken<T> make_new_token(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                           const Tensor& inv_freq, bool interleaved, float attention_factor) {
  return NewToken<T>{static_cast<const T*>(q.data_ptr()), static_cast<const T*>(k.data_ptr()),
                     static_cast<const T*>(v.data_ptr()), q.strides()[0], q.strides()[1], k.strides()[0],
                     k.strides()[1], v.strides()[0], v.strides()[1], positions.data<int32_t>(),
                     inv_freq.data<float>(), static_cast<int>(inv_freq.numel()), interleaved,
                     attention_factor};
}

// The dim a lane's i-th value is: lane + 32 i (strided, any D), or lane D/32 + i (contiguous, D a
// multiple of 32, so that a lane loads its part of a cache row with one vector load).
template <int D, bool kContig>
__device__ __forceinline__ int lane_dim(int lane, int i) {
  return kContig ? lane * (D / 32) + i : lane + 32 * i;
}

// Each lane's cos and sin, at the angle of `position`, of the dims it holds (zero past the rotary
// dims).
template <typename T, int D, bool kContig>
__device__ __forceinline__ void lane_cos_sin(const NewToken<T>& tok, int position, float (&c)[per_lane<D>()],
                                             float (&s)[per_lane<D>()]) {
  const int lane = threadIdx.x % 32;
  const float angle_pos = static_cast<float>(position);
#pragma unroll
  for (int i = 0; i < per_lane<D>(); ++i) {
    const int d = lane_dim<D, kContig>(lane, i);
    c[i] = s[i] = 0.0f;
    if (d < 2 * tok.half)
      nn::cos_sin<T>(angle_pos, tok.inv_freq[d < tok.half ? d : d - tok.half], tok.attention_factor, c[i], s[i]);
  }
}

// This lane's values of head x (lane_dim; 0 past D).
template <typename T, int D, bool kContig = false>
__device__ __forceinline__ void load_head(const T* x, float (&r)[per_lane<D>()]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < per_lane<D>(); ++i) {
    const int d = lane_dim<D, kContig>(lane, i);
    r[i] = d < D ? to_float(x[d]) : 0.0f;
  }
}

// A head's values r at this lane's dims (load_head), rotated and rounded to T as rope() stores
// them (rope.cu: store_rotated); dims past the rotary ones unchanged. (c, s) are the lane's cos and
// sin (lane_cos_sin). The head passes through the warp's `stage` (D floats of shared memory),
// since a dim's partner may be another lane's.
template <typename T, int D, bool kContig = false>
__device__ __forceinline__ void rotate_values(int half, bool interleaved, const float (&c)[per_lane<D>()],
                                              const float (&s)[per_lane<D>()], float* stage,
                                              float (&r)[per_lane<D>()]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < per_lane<D>(); ++i) {
    const int d = lane_dim<D, kContig>(lane, i);
    if (d < D) stage[d] = r[i];
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < per_lane<D>(); ++i) {
    const int d = lane_dim<D, kContig>(lane, i);
    if (d >= 2 * half) continue;
    const int p = d < half ? d : d - half;
    const float a = stage[interleaved ? 2 * p : p], b = stage[interleaved ? 2 * p + 1 : p + half];
    r[i] = nn::round_to<T>(d < half ? a * c[i] - b * s[i] : b * c[i] + a * s[i]);
  }
  __syncwarp();  // the stage is free for the warp's next head
}

// load_head, then rotate_values.
template <typename T, int D, bool kContig = false>
__device__ __forceinline__ void rotate_head(const T* x, int half, bool interleaved, const float (&c)[per_lane<D>()],
                                            const float (&s)[per_lane<D>()], float* stage,
                                            float (&r)[per_lane<D>()]) {
  load_head<T, D, kContig>(x, r);
  rotate_values<T, D, kContig>(half, interleaved, c, s, stage, r);
}

}  // namespace marlin::cuda::gqa
