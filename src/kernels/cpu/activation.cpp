// CPU SwiGLU (silu(gate) * up), residual add and last-dim softmax.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/nn_common.h"
#include "kernels/cpu/nn_kernels.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {

void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  const int64_t n = gate.size(-1), rows = gate.numel() / std::max<int64_t>(n, 1);
  if (rows == 0 || n == 0) return;
  const auto g_rows = nn::rows_of(gate, "silu_mul"), u_rows = nn::rows_of(up, "silu_mul");
  const auto o_rows = nn::rows_of(out, "silu_mul");
  nn::dispatch_float(gate.dtype(), "silu_mul", [&]<typename T>() {
    const T* gp = static_cast<const T*>(gate.data_ptr());
    const T* up_p = static_cast<const T*>(up.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* g = gp + g_rows.offset(r);
        const T* u = up_p + u_rows.offset(r);
        T* o = op + o_rows.offset(r);
        for (int64_t j = 0; j < n; ++j) {
          const float x = nn::load(g[j]);
          // Transformers computes act_fn(gate) as a tensor of the dtype, then multiplies.
          const float s = nn::round_to<T>(x / (1.0f + std::exp(-x)));
          o[j] = nn::store<T>(s * nn::load(u[j]));
        }
      }
    });
  });
}

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  nn::dispatch_float(a.dtype(), "add", [&]<typename T>() {
    const T* ap = static_cast<const T*>(a.data_ptr());
    const T* bp = static_cast<const T*>(b.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(0, a.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = nn::store<T>(nn::load(ap[i]) + nn::load(bp[i]));
    });
  });
}

void softmax_last_dim(const Tensor& x, const Tensor& out) {
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  if (rows == 0 || n == 0) return;
  const auto in_rows = nn::rows_of(x, "softmax_last_dim");
  const auto out_rows = nn::rows_of(out, "softmax_last_dim");
  nn::dispatch_float(x.dtype(), "softmax_last_dim", [&]<typename T>() {
    const T* xp = static_cast<const T*>(x.data_ptr());
    float* op = static_cast<float*>(out.data_ptr());
    parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = xp + in_rows.offset(r);
        float* o = op + out_rows.offset(r);
        float m = -INFINITY;
        for (int64_t j = 0; j < n; ++j) m = std::max(m, nn::load(xr[j]));
        // A row of -inf only (everything masked) gives NaN, as torch.softmax does.
        // Sums of 256-element chunks: a running f32 sum over a vocabulary-sized row would lose
        // 1e-4 of the total.
        float sum = 0.0f;
        for (int64_t c = 0; c < n; c += 256) {
          float part = 0.0f;
          for (int64_t j = c; j < std::min(n, c + 256); ++j) {
            o[j] = std::exp(nn::load(xr[j]) - m);
            part += o[j];
          }
          sum += part;
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < n; ++j) o[j] *= inv;
      }
    });
  });
}

}  // namespace marlin::cpu
