// CPU RMSNorm and fused residual-add + RMSNorm: one row per task, f32 sums.
#include <cmath>
#include <vector>

#include "kernels/cpu/nn_common.h"
#include "kernels/cpu/nn_kernels.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {
namespace {

// Rows of about 16K elements per task: enough work to pay for the hand-off.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(n, 1)); }

// out = weight * (v * rsqrt(mean(v^2) + eps)).to(T) for one row of values already in f32.
template <typename T>
void normalize_row(const float* v, int64_t n, const void* weight, DType wt, float eps, T* out) {
  // Eight partial sums keep the loop vectorizable; f32 like Transformers' variance.
  float part[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) part[u] += v[j + u] * v[j + u];
  for (; j < n; ++j) part[0] += v[j] * v[j];
  float ss = 0.0f;
  for (float p : part) ss += p;
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (j = 0; j < n; ++j)
    out[j] = nn::store<T>(nn::load_any(weight, wt, j) * nn::round_to<T>(v[j] * inv));
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  if (rows == 0 || n == 0) return;
  const auto in_rows = nn::rows_of(x, "rms_norm"), out_rows = nn::rows_of(out, "rms_norm");
  nn::dispatch_float(x.dtype(), "rms_norm", [&]<typename T>() {
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(0, rows, row_grain(n), [&](int64_t b, int64_t e) {
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t r = b; r < e; ++r) {
        const T* xr = xp + in_rows.offset(r);
        for (int64_t j = 0; j < n; ++j) v[static_cast<size_t>(j)] = nn::load(xr[j]);
        normalize_row<T>(v.data(), n, weight.data_ptr(), weight.dtype(), eps, op + out_rows.offset(r));
      }
    });
  });
}

void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out) {
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  if (rows == 0 || n == 0) return;
  const auto res_rows = nn::rows_of(residual, "add_rms_norm");
  const auto in_rows = nn::rows_of(x, "add_rms_norm"), out_rows = nn::rows_of(out, "add_rms_norm");
  nn::dispatch_float(x.dtype(), "add_rms_norm", [&]<typename T>() {
    T* rp = static_cast<T*>(residual.data_ptr());
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    parallel_for(0, rows, row_grain(n), [&](int64_t b, int64_t e) {
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t r = b; r < e; ++r) {
        T* rr = rp + res_rows.offset(r);
        const T* xr = xp + in_rows.offset(r);
        // The sum is rounded to the residual's dtype first: the norm sees the stored residual.
        for (int64_t j = 0; j < n; ++j) {
          rr[j] = nn::store<T>(nn::load(rr[j]) + nn::load(xr[j]));
          v[static_cast<size_t>(j)] = nn::load(rr[j]);
        }
        normalize_row<T>(v.data(), n, weight.data_ptr(), weight.dtype(), eps, op + out_rows.offset(r));
      }
    });
  });
}

}  // namespace marlin::cpu
