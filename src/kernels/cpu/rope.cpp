// CPU rotary position embedding, in place: cos/sin once per token, then every q and k head.
#include <cmath>
#include <vector>

#include "kernels/cpu/nn_common.h"
#include "kernels/cpu/nn_kernels.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {
namespace {

// Rotates the first 2 * half dims of each of `heads` heads of one token.
template <typename T>
void rotate_heads(T* base, int64_t heads, int64_t head_stride, int64_t half, const float* cos,
                  const float* sin, bool interleaved, float* scratch) {
  for (int64_t h = 0; h < heads; ++h) {
    T* x = base + h * head_stride;
    if (interleaved) {
      // Pairs (2i, 2i+1) in, halves out: read everything before writing.
      for (int64_t j = 0; j < 2 * half; ++j) scratch[j] = nn::load(x[j]);
      for (int64_t i = 0; i < half; ++i) {
        const float a = scratch[2 * i], b = scratch[2 * i + 1];
        x[i] = nn::store<T>(a * cos[i] - b * sin[i]);
        x[i + half] = nn::store<T>(b * cos[i] + a * sin[i]);
      }
    } else {
      for (int64_t i = 0; i < half; ++i) {
        const float a = nn::load(x[i]), b = nn::load(x[i + half]);
        x[i] = nn::store<T>(a * cos[i] - b * sin[i]);
        x[i + half] = nn::store<T>(b * cos[i] + a * sin[i]);
      }
    }
  }
}

}  // namespace

void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
          bool interleaved, float attention_factor) {
  const int64_t tokens = q.size(0), half = inv_freq.numel();
  if (tokens == 0 || half == 0) return;
  const int32_t* pos = positions.data<int32_t>();
  const float* freq = inv_freq.data<float>();
  nn::dispatch_float(q.dtype(), "rope", [&]<typename T>() {
    parallel_for(0, tokens, 16, [&](int64_t b, int64_t e) {
      std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half));
      std::vector<float> scratch(static_cast<size_t>(2 * half));
      for (int64_t t = b; t < e; ++t) {
        for (int64_t i = 0; i < half; ++i) {
          // Transformers: freqs = position.float() * inv_freq in f32, cos/sin of that f32
          // angle times attention_scaling, then .to(x.dtype).
          const float angle = static_cast<float>(pos[t]) * freq[i];
          cos[static_cast<size_t>(i)] = nn::round_to<T>(std::cos(angle) * attention_factor);
          sin[static_cast<size_t>(i)] = nn::round_to<T>(std::sin(angle) * attention_factor);
        }
        for (const Tensor* x : {&q, &k}) {
          if (!x->defined()) continue;
          T* base = static_cast<T*>(x->data_ptr()) + t * x->strides()[0];
          rotate_heads<T>(base, x->size(1), x->strides()[1], half, cos.data(), sin.data(),
                          interleaved, scratch.data());
        }
      }
    });
  });
}

}  // namespace marlin::cpu
