// CPU multi-head latent attention: one query row (b, t, h) at a time with an online softmax in
// f32, threaded over rows; and the per-head matrix product of the absorbed form.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/mla_kernels.h"
#include "kernels/cpu/nn_common.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {
namespace {

using kernels::MlaAttentionArgs;
using kernels::MlaOperand;
using nn::load;
using nn::store;

template <typename T>
const T* row_of(const MlaOperand& o, int64_t b, int64_t r, int64_t h) {
  return static_cast<const T*>(o.data) + b * o.batch_stride + r * o.row_stride + h * o.head_stride;
}

template <typename T>
void attention_impl(const MlaAttentionArgs& a) {
  const int64_t rows = static_cast<int64_t>(a.B) * a.T * a.H;
  T* out = static_cast<T*>(a.out);
  parallel_for(0, rows, 2, [&](int64_t begin, int64_t end) {
    std::vector<float> qn(static_cast<size_t>(a.Dn)), qr(static_cast<size_t>(a.Dr)),
        acc(static_cast<size_t>(a.Dv));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r % a.H, t = (r / a.H) % a.T, b = r / (static_cast<int64_t>(a.H) * a.T);
      // Query t's position; with right padding the padding queries (t >= new_tokens[b]) take
      // the row's last valid one, so they see its whole prefix and nothing past it.
      const int64_t len = a.seq_lens[b];
      const int64_t real = a.new_tokens != nullptr ? a.new_tokens[b] : a.T;
      const int64_t pos = std::min(len - real + t, len - 1);
      const T* qnp = row_of<T>(a.q_nope, b, t, h);
      const T* qrp = row_of<T>(a.q_rope, b, t, h);
      for (int d = 0; d < a.Dn; ++d) qn[static_cast<size_t>(d)] = load(qnp[d]) * a.scale;
      for (int d = 0; d < a.Dr; ++d) qr[static_cast<size_t>(d)] = load(qrp[d]) * a.scale;
      for (float& x : acc) x = 0.0f;
      float m = -INFINITY, l = 0.0f;
      for (int64_t j = 0; j <= pos; ++j) {
        const T* kn = row_of<T>(a.k_nope, b, j, h);
        const T* kr = row_of<T>(a.k_rope, b, j, h);
        float s = 0.0f;
        for (int d = 0; d < a.Dn; ++d) s += qn[static_cast<size_t>(d)] * load(kn[d]);
        for (int d = 0; d < a.Dr; ++d) s += qr[static_cast<size_t>(d)] * load(kr[d]);
        if (s > m) {
          // Rescale what was summed under the old maximum (exp(-inf) = 0 on the first key).
          const float c = std::exp(m - s);
          l *= c;
          for (float& x : acc) x *= c;
          m = s;
        }
        const float p = std::exp(s - m);
        l += p;
        const T* vr = row_of<T>(a.v, b, j, h);
        for (int d = 0; d < a.Dv; ++d) acc[static_cast<size_t>(d)] += p * load(vr[d]);
      }
      T* o = out + r * a.Dv;
      for (int d = 0; d < a.Dv; ++d) o[d] = store<T>(acc[static_cast<size_t>(d)] / l);
    }
  });
}

template <typename T>
void head_matmul_impl(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t M = x.size(0), H = x.size(1), K = x.size(2), N = w.size(2);
  const int64_t sm = x.strides()[0], sh = x.strides()[1];
  const T* xp = x.data<T>();
  const T* wp = w.data<T>();
  T* op = out.data<T>();
  parallel_for(0, M * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(N));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t m = r / H, h = r % H;
      const T* xr = xp + m * sm + h * sh;
      const T* wh = wp + h * K * N;
      for (float& v : acc) v = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float xv = load(xr[k]);
        const T* wr = wh + k * N;
        for (int64_t n = 0; n < N; ++n) acc[static_cast<size_t>(n)] += xv * load(wr[n]);
      }
      T* o = op + r * N;
      for (int64_t n = 0; n < N; ++n) o[n] = store<T>(acc[static_cast<size_t>(n)]);
    }
  });
}

}  // namespace

void mla_attention(const MlaAttentionArgs& args, DType dtype) {
  nn::dispatch_float(dtype, "mla_attention", [&]<typename T>() { attention_impl<T>(args); });
}

void mla_head_matmul(const Tensor& x, const Tensor& w, Tensor& out) {
  nn::dispatch_float(x.dtype(), "mla_head_matmul",
                     [&]<typename T>() { head_matmul_impl<T>(x, w, out); });
}

}  // namespace marlin::cpu
