// CUDA rotary position embedding, in place: one block per token computes its cos/sin once into
// shared memory, then rotates every q and k head, a few heads at a time staged through shared
// memory (the interleaved layout writes positions other threads read).
#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kStageFloats = 4096;  // heads staged per round: 16 KB

struct HeadSet {
  void* data = nullptr;  // nullptr: absent
  int64_t token_stride = 0, head_stride = 0;
  int heads = 0;
};

template <typename T>
__global__ void rope_kernel(HeadSet q, HeadSet k, const int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, int half, bool interleaved,
                            float attention_factor, int stage_heads) {
  extern __shared__ float smem[];
  float* cos_t = smem;
  float* sin_t = smem + half;
  float* stage = smem + 2 * half;
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);  // the f32 angle of Transformers, precise sincosf
    cos_t[i] = nn::round_to<T>(c * attention_factor);
    sin_t[i] = nn::round_to<T>(s * attention_factor);
  }
  const int total = q.heads + k.heads, width = 2 * half;
  for (int first = 0; first < total; first += stage_heads) {
    const int count = min(stage_heads, total - first);
    __syncthreads();  // cos/sin ready; the previous round's stage consumed
    for (int idx = threadIdx.x; idx < count * width; idx += blockDim.x) {
      const int h = first + idx / width, j = idx % width;
      const HeadSet& set = h < q.heads ? q : k;
      const T* x = static_cast<const T*>(set.data) + t * set.token_stride +
                   (h < q.heads ? h : h - q.heads) * set.head_stride;
      stage[idx] = to_float(x[j]);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < count * half; idx += blockDim.x) {
      const int hl = idx / half, i = idx % half, h = first + hl;
      const HeadSet& set = h < q.heads ? q : k;
      T* x = static_cast<T*>(set.data) + t * set.token_stride +
             (h < q.heads ? h : h - q.heads) * set.head_stride;
      const float* s = stage + hl * width;
      const float a = interleaved ? s[2 * i] : s[i];
      const float b = interleaved ? s[2 * i + 1] : s[i + half];
      x[i] = from_float<T>(a * cos_t[i] - b * sin_t[i]);
      x[i + half] = from_float<T>(b * cos_t[i] + a * sin_t[i]);
    }
  }
}

HeadSet head_set(const Tensor& x) {
  if (!x.defined()) return {};
  return {x.data_ptr(), x.strides()[0], x.strides()[1], static_cast<int>(x.size(1))};
}

}  // namespace

void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
          bool interleaved, float attention_factor) {
  const int64_t tokens = q.size(0);
  const int half = static_cast<int>(inv_freq.numel());
  if (tokens == 0 || half == 0) return;
  const HeadSet qs = head_set(q), ks = head_set(k);
  const int total = qs.heads + ks.heads;
  if (total == 0) return;
  const int stage_heads = std::max(1, std::min(total, kStageFloats / (2 * half)));
  const size_t smem = sizeof(float) * (2 * static_cast<size_t>(half) * (1 + stage_heads));
  MARLIN_CHECK(smem <= 48 * 1024, "rope", "rotary_dim=", 2 * half, " needs ", smem,
               " bytes of shared memory per block, over 48 KB");
  MARLIN_CHECK(tokens < (int64_t{1} << 31), "rope", "too many tokens: ", tokens);
  auto stream = static_cast<cudaStream_t>(current_stream(q.device().index).handle);
  nn::dispatch_float(q.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<static_cast<unsigned>(tokens), kThreads, smem, stream>>>(
        qs, ks, positions.data<int32_t>(), inv_freq.data<float>(), half, interleaved,
        attention_factor, stage_heads);
  });
  MARLIN_CUDA_CHECK_LAUNCH("rope");
}

}  // namespace marlin::cuda
