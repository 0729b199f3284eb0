// CUDA SwiGLU (silu(gate) * up), residual add, last-dim softmax and float dtype casts.
#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using kernels::RowLayout;

cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_stream(t.device().index).handle);
}

// Columns over x blocks, rows over y blocks (looping past the grid's y limit).
template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate, RowLayout gl, const T* __restrict__ up,
                                RowLayout ul, T* __restrict__ out, RowLayout ol, int64_t rows,
                                int64_t n) {
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    out[nn::row_offset(ol, r) + j] =
        nn::silu_mul_value<T>(to_float(gate[nn::row_offset(gl, r) + j]), to_float(up[nn::row_offset(ul, r) + j]));
  }
}

// The fast path of rows of whole 16-byte vectors: thread c of the row's blocks owns vector c.
// Both loads precede the store, so out may be gate or up themselves (no __restrict__).
template <typename T>
__global__ void silu_mul_vector_kernel(const T* gate, RowLayout gl, const T* up, RowLayout ul,
                                       T* out, RowLayout ol, int64_t rows, int64_t vectors) {
  TRACE_START
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  pdl_wait();               // launched as a programmatic dependent: gate and up are the GEMM's
  TRACE_WAITED
  constexpr int V = nn::kVec<T>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= vectors) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const nn::Pack<T, V> g = nn::load_pack<T, V>(gate + nn::row_offset(gl, r) + c * V);
    const nn::Pack<T, V> u = nn::load_pack<T, V>(up + nn::row_offset(ul, r) + c * V);
    nn::Pack<T, V> y;
#pragma unroll
    for (int e = 0; e < V; ++e) y.v[e] = nn::silu_mul_value<T>(to_float(g.v[e]), to_float(u.v[e]));
    nn::store_pack<T, V>(out + nn::row_offset(ol, r) + c * V, y);
  }
  TRACE_END(silu)
}

template <typename T>
__global__ void add_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                           int64_t n) {
  pdl_launch_dependents();
  pdl_wait();  // launched as a programmatic dependent: a and b are earlier kernels' outputs
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}

template <typename TI, typename TO>
__global__ void cast_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<TO>(to_float(x[i]));
}

// One block per row: max, sum of exponentials, then the normalized values.
template <typename T>
__global__ void softmax_kernel(const T* __restrict__ x, RowLayout xl, float* __restrict__ out,
                               RowLayout ol, int64_t rows, int64_t n) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + xl.offset(row);
    float* o = out + ol.offset(row);
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, to_float(xr[j]));
    m = nn::block_reduce<true>(m, scratch);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float e = expf(to_float(xr[j]) - m);
      o[j] = e;
      sum += e;
    }
    const float inv = 1.0f / nn::block_reduce<false>(sum, scratch);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) o[j] *= inv;
  }
}

}  // namespace

void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  const int64_t n = gate.size(-1), rows = n ? gate.numel() / n : 0;
  if (rows == 0) return;
  const RowLayout gl = nn::rows_of(gate, "silu_mul"), ul = nn::rows_of(up, "silu_mul");
  const RowLayout ol = nn::rows_of(out, "silu_mul");
  const size_t es = gate.element_size();
  const int64_t vec = 16 / static_cast<int64_t>(es);
  const bool vector_ok = n % vec == 0 && nn::rows_aligned16(gate.data_ptr(), gl, es) &&
                         nn::rows_aligned16(up.data_ptr(), ul, es) &&
                         nn::rows_aligned16(out.data_ptr(), ol, es);
  const int threads = vector_ok ? 128 : 256;  // small: a decode row of 14336 bf16 spans 14 SMs
  const int64_t per_row = vector_ok ? n / vec : n;
  const dim3 grid(static_cast<unsigned>((per_row + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  nn::dispatch_float(gate.dtype(), "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(gate.data_ptr());
    const T* upp = static_cast<const T*>(up.data_ptr());
    T* yp = static_cast<T*>(out.data_ptr());
    if (vector_ok)
      MARLIN_CUDA_CHECK(launch_pdl(silu_mul_vector_kernel<T>, grid, dim3(threads), 0, stream_of(gate), gp, gl,
                                   upp, ul, yp, ol, rows, per_row),
                        "silu_mul");
    else
      silu_mul_kernel<T><<<grid, threads, 0, stream_of(gate)>>>(gp, gl, upp, ul, yp, ol, rows, n);
  });
  MARLIN_CUDA_CHECK_LAUNCH("silu_mul");
}

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  const int64_t n = a.numel();
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8192));
  nn::dispatch_float(a.dtype(), "add", [&](auto tag) {
    using T = decltype(tag);
    MARLIN_CUDA_CHECK(launch_pdl(add_kernel<T>, dim3(blocks), dim3(256), 0, stream_of(a),
                                 static_cast<const T*>(a.data_ptr()), static_cast<const T*>(b.data_ptr()),
                                 static_cast<T*>(out.data_ptr()), n),
                      "add");
  });
}

void cast(const Tensor& x, const Tensor& out) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8192));
  nn::dispatch_float(x.dtype(), "cast", [&](auto in_tag) {
    using TI = decltype(in_tag);
    nn::dispatch_float(out.dtype(), "cast", [&](auto out_tag) {
      using TO = decltype(out_tag);
      cast_kernel<TI, TO><<<blocks, 256, 0, stream_of(x)>>>(static_cast<const TI*>(x.data_ptr()),
                                                          static_cast<TO*>(out.data_ptr()), n);
    });
  });
  MARLIN_CUDA_CHECK_LAUNCH("cast");
}

void softmax_last_dim(const Tensor& x, const Tensor& out) {
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  const RowLayout xl = nn::rows_of(x, "softmax_last_dim"), ol = nn::rows_of(out, "softmax_last_dim");
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, 1 << 20));
  const int threads = n >= 4096 ? 1024 : 256;  // vocab-sized rows: more threads per row
  nn::dispatch_float(x.dtype(), "softmax_last_dim", [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T><<<blocks, threads, 0, stream_of(x)>>>(static_cast<const T*>(x.data_ptr()), xl,
                                                           out.data<float>(), ol, rows, n);
  });
  MARLIN_CUDA_CHECK_LAUNCH("softmax_last_dim");
}

}  // namespace marlin::cuda
