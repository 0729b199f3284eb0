// CUDA RMSNorm and fused residual-add + RMSNorm: one block per row, f32 sums, the
// normalized value rounded to the dtype before the weight product (Transformers' LlamaRMSNorm).
#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using kernels::RowLayout;
constexpr int kThreads = 256;

// With `residual` non-null: residual += x first (rounded to T), and the norm is of the new
// residual. Each thread rereads only the elements it wrote, so no barrier is needed between.
template <typename T, typename W>
__global__ void rms_norm_kernel(const T* __restrict__ x, RowLayout xl, T* residual, RowLayout rl,
                                const W* __restrict__ weight, T* out, RowLayout ol, int64_t rows,
                                int64_t n, float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + xl.offset(row);
    T* rr = residual ? residual + rl.offset(row) : nullptr;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      float v = to_float(xr[j]);
      if (rr) {
        const T r = from_float<T>(to_float(rr[j]) + v);
        rr[j] = r;
        v = to_float(r);
      }
      ss += v * v;
    }
    ss = nn::block_reduce<false>(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
    const T* src = rr ? rr : xr;
    T* o = out + ol.offset(row);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      o[j] = from_float<T>(to_float(weight[j]) * nn::round_to<T>(to_float(src[j]) * inv));
  }
}

void launch(const char* op, const Tensor& x, const Tensor* residual, const Tensor& weight, float eps,
            const Tensor& out) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  const RowLayout xl = nn::rows_of(x, op), ol = nn::rows_of(out, op);
  const RowLayout rl = residual ? nn::rows_of(*residual, op) : RowLayout{};
  auto stream = static_cast<cudaStream_t>(current_stream(x.device().index).handle);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, 1 << 20));
  nn::dispatch_float(x.dtype(), op, [&](auto t_tag) {
    using T = decltype(t_tag);
    nn::dispatch_float(weight.dtype(), op, [&](auto w_tag) {
      using W = decltype(w_tag);
      rms_norm_kernel<T, W><<<blocks, kThreads, 0, stream>>>(
          static_cast<const T*>(x.data_ptr()), xl,
          residual ? static_cast<T*>(residual->data_ptr()) : nullptr, rl,
          static_cast<const W*>(weight.data_ptr()), static_cast<T*>(out.data_ptr()), ol, rows, n, eps);
    });
  });
  MARLIN_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  launch("rms_norm", x, nullptr, weight, eps, out);
}

void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out) {
  launch("add_rms_norm", x, &residual, weight, eps, out);
}

}  // namespace marlin::cuda
