// CPU attention: one query row at a time with an online softmax in f32, threaded over rows. The
// reference that the CUDA kernels are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention_kernels.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {
namespace {

inline float to_f(float v) { return v; }
inline float to_f(Half v) { return v.to_float(); }
inline float to_f(BFloat16 v) { return v.to_float(); }
template <typename T>
T from_f(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return T::from_float(v);
}

// out = softmax(scale * q . k[lo..hi]) v[lo..hi]; key j's row starts at k + j * key_stride (the
// same for v). qf and acc are scratch rows of D floats.
template <typename T>
void attend_row(const T* q, const T* k, const T* v, int64_t key_stride, int64_t lo, int64_t hi,
                int64_t D, float scale, T* out, float* qf, float* acc) {
  for (int64_t d = 0; d < D; ++d) {
    qf[d] = to_f(q[d]) * scale;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = lo; j <= hi; ++j) {
    const T* kr = k + j * key_stride;
    const T* vr = v + j * key_stride;
    float s = 0.0f;
    for (int64_t d = 0; d < D; ++d) s += qf[d] * to_f(kr[d]);
    if (s > m) {
      // Rescale what was summed under the old maximum (exp(-inf) = 0 on the first key).
      const float c = std::exp(m - s);
      l *= c;
      for (int64_t d = 0; d < D; ++d) acc[d] *= c;
      m = s;
    }
    const float p = std::exp(s - m);
    l += p;
    for (int64_t d = 0; d < D; ++d) acc[d] += p * to_f(vr[d]);
  }
  // No visible key (an empty row of a padded batch): zeros rather than 0/0.
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int64_t d = 0; d < D; ++d) out[d] = from_f<T>(acc[d] * inv);
}

// First visible key of a query at position pos.
inline int64_t window_start(int64_t pos, int64_t window) {
  return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

template <typename T>
void prefill_impl(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t window,
                  Tensor& out) {
  const int64_t T_len = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  const int64_t group = Hq / Hkv;
  const T* qp = q.data<T>();
  const T* kp = k.data<T>();
  const T* vp = v.data<T>();
  T* op = out.data<T>();
  parallel_for(0, T_len * Hq, 4, [&](int64_t b, int64_t e) {
    std::vector<float> qf(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
    for (int64_t r = b; r < e; ++r) {
      const int64_t t = r / Hq, h = r % Hq;
      const int64_t kv = (h / group) * D;
      attend_row(qp + r * D, kp + kv, vp + kv, Hkv * D, window_start(t, window), t, D, scale,
                 op + r * D, qf.data(), acc.data());
    }
  });
}

template <typename T>
void extend_impl(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seq_lens,
                 const Tensor& new_tokens, float scale, int64_t window, Tensor& out) {
  const int64_t B = q.size(0), T_len = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = kc.size(1), S = kc.size(2), group = Hq / Hkv;
  const int32_t* lens = seq_lens.data<int32_t>();
  const int32_t* news = new_tokens.defined() ? new_tokens.data<int32_t>() : nullptr;
  const T* qp = q.data<T>();
  const T* kp = kc.data<T>();
  const T* vp = vc.data<T>();
  T* op = out.data<T>();
  parallel_for(0, B * T_len * Hq, 4, [&](int64_t b0, int64_t e) {
    std::vector<float> qf(static_cast<size_t>(D)), acc(static_cast<size_t>(D));
    for (int64_t r = b0; r < e; ++r) {
      const int64_t h = r % Hq, t = (r / Hq) % T_len, b = r / (Hq * T_len);
      // Padding queries (t >= the row's new tokens) stop at the row's last valid key.
      const int64_t fresh = news ? news[b] : T_len;
      const int64_t pos = std::min<int64_t>(lens[b] - fresh + t, lens[b] - 1);
      const int64_t base = ((b * Hkv + h / group) * S) * D;
      attend_row(qp + r * D, kp + base, vp + base, D, window_start(pos, window), pos, D, scale,
                 op + r * D, qf.data(), acc.data());
    }
  });
}

template <typename F>
void dispatch_dtype(DType t, F&& f) {
  if (t == DType::f32) f(float{});
  else if (t == DType::f16) f(Half{});
  else f(BFloat16{});
}

}  // namespace

void attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t sliding_window, Tensor& out) {
  dispatch_dtype(q.dtype(), [&](auto tag) {
    prefill_impl<decltype(tag)>(q, k, v, scale, sliding_window, out);
  });
}

void attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& seq_lens, const Tensor& new_tokens, float scale,
                      int64_t sliding_window, Tensor& out) {
  dispatch_dtype(q.dtype(), [&](auto tag) {
    extend_impl<decltype(tag)>(q, k_cache, v_cache, seq_lens, new_tokens, scale, sliding_window,
                               out);
  });
}

void attention_cache_write(Tensor& cache, const Tensor& src, int64_t start) {
  const std::vector<int32_t> starts(static_cast<size_t>(src.size(0)), static_cast<int32_t>(start));
  attention_cache_write(cache, src, starts.data(), nullptr);
}

void attention_cache_write(Tensor& cache, const Tensor& src, const int32_t* starts,
                           const int32_t* counts) {
  const int64_t B = src.size(0), H = src.size(1), T_len = src.size(2), D = src.size(3);
  const int64_t S = cache.size(2);
  const size_t es = cache.element_size();
  const Shape& st = src.strides();
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* cp = static_cast<char*>(cache.data_ptr());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < (counts ? counts[b] : T_len); ++t) {
        char* dst = cp + static_cast<size_t>(((b * H + h) * S + starts[b] + t) * D) * es;
        const int64_t row = b * st[0] + h * st[1] + t * st[2];
        if (st[3] == 1) {
          std::memcpy(dst, sp + static_cast<size_t>(row) * es, static_cast<size_t>(D) * es);
          continue;
        }
        for (int64_t d = 0; d < D; ++d)
          std::memcpy(dst + static_cast<size_t>(d) * es,
                      sp + static_cast<size_t>(row + d * st[3]) * es, es);
      }
}

void add_lengths(const int32_t* lengths, int64_t n, const int32_t* counts, int32_t* out,
                 int64_t B) {
  for (int64_t b = 0; b < B; ++b)
    out[b] = static_cast<int32_t>(lengths[b] + (counts ? counts[b] : n));
}

void sequence_positions(const int32_t* lengths, int64_t B, int64_t T, int32_t* out) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) out[b * T + t] = static_cast<int32_t>(lengths[b] + t);
}

}  // namespace marlin::cpu
