// CUDA RMSNorm and fused residual-add + RMSNorm: one block per row, f32 sums, the
// normalized value rounded to the dtype before the weight product (Transformers' LlamaRMSNorm).
// Rows of whole 16-byte vectors (every hidden size of the supported models) take a fast path
// that keeps the row in registers; any other layout takes the general kernel.
#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using kernels::RowLayout;
constexpr int kThreads = 256;
// Fast path: each thread holds 1, 2 or 4 vectors of its row; blocks of at most 512 threads
// leave 128 registers a thread for four vectors of x, residual and weight.
constexpr int kVectorThreads = 512;
constexpr int kMaxVectorsPerThread = 4;

// With `residual` non-null: residual += x first (rounded to T), and the norm is of the new
// residual. Each thread rereads only the elements it wrote, so no barrier is needed between.
template <typename T, typename W>
__global__ void rms_norm_kernel(const T* __restrict__ x, RowLayout xl, T* residual, RowLayout rl,
                                const W* __restrict__ weight, T* out, RowLayout ol, int64_t rows,
                                int64_t n, float eps) {
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + nn::row_offset(xl, row);
    T* rr = residual ? residual + nn::row_offset(rl, row) : nullptr;
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
    T* o = out + nn::row_offset(ol, row);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      o[j] = from_float<T>(to_float(weight[j]) * nn::round_to<T>(to_float(src[j]) * inv));
  }
}

// The fast path: thread i of the block owns vectors i, i + blockDim.x, ... (kPer of them) of
// the row. Every load of x, residual and weight is issued before the first store, so one
// memory latency covers the whole row; this is what makes the kernel correct in place too
// (out == x, or out == residual): a thread writes only the elements it has already read.
// So x, residual and out carry no __restrict__, nor does the weight: with it nvcc sinks the
// weight loads below the residual stores, a second memory latency before the product. The
// weight loads come first of all, before the wait for the previous kernel (pdl.cuh).
template <typename T, typename W, int kPer, bool kAdd>
__global__ void __launch_bounds__(kVectorThreads)
rms_norm_vector_kernel(const T* x, RowLayout xl, T* residual, RowLayout rl, const W* weight,
                       T* out, RowLayout ol, int64_t rows, int vectors, int n, float eps) {
  TRACE_START
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  constexpr int V = nn::kVec<T>;
  // The norm's weights (the same for every row, and no kernel writes them) are requested before
  // waiting for the previous kernel, so their memory latency passes while it finishes.
  nn::Pack<W, V> wv[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < vectors) wv[k] = nn::load_pack<W, V>(weight + c * V);
  }
  pdl_wait();  // launched as a programmatic dependent: x is the previous output
  TRACE_WAITED
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + nn::row_offset(xl, row);
    T* rr = kAdd ? residual + nn::row_offset(rl, row) : nullptr;
    // hv: the values normalized (x, or the new residual), kept as T: they are T values, so
    // converting them again later is exact, and packed they take half the registers.
    nn::Pack<T, V> hv[kPer], rv[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c < vectors) {
        hv[k] = nn::load_pack<T, V>(xr + c * V);
        if constexpr (kAdd) rv[k] = nn::load_pack<T, V>(rr + c * V);
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c >= vectors) continue;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        if constexpr (kAdd) hv[k].v[e] = from_float<T>(to_float(rv[k].v[e]) + to_float(hv[k].v[e]));
        const float a = to_float(hv[k].v[e]);
        ss += a * a;
      }
      if constexpr (kAdd) nn::store_pack<T, V>(rr + c * V, hv[k]);
    }
    ss = nn::block_reduce<false>(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
    T* o = out + nn::row_offset(ol, row);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c >= vectors) continue;
      nn::Pack<T, V> y;
#pragma unroll
      for (int e = 0; e < V; ++e)
        y.v[e] = from_float<T>(to_float(wv[k].v[e]) * nn::round_to<T>(to_float(hv[k].v[e]) * inv));
      nn::store_pack<T, V>(o + c * V, y);
    }
  }
  TRACE_END(norm)
}

template <typename T, typename W, bool kAdd>
void launch_vector(int per, int threads, unsigned blocks, cudaStream_t stream, const T* x,
                   RowLayout xl, T* residual, RowLayout rl, const W* weight, T* out, RowLayout ol,
                   int64_t rows, int vectors, int n, float eps) {
  switch (per) {
#define MARLIN_RMS_NORM_CASE(P)                                                                  \
  case P:                                                                                        \
    MARLIN_CUDA_CHECK(launch_pdl(rms_norm_vector_kernel<T, W, P, kAdd>, dim3(blocks), dim3(threads), 0, \
                                 stream, x, xl, residual, rl, weight, out, ol, rows, vectors, n, eps), \
                      "rms_norm");                                                               \
    break;
    MARLIN_RMS_NORM_CASE(1)
    MARLIN_RMS_NORM_CASE(2)
    MARLIN_RMS_NORM_CASE(4)
#undef MARLIN_RMS_NORM_CASE
    default: fail("rms_norm", "no vector kernel for ", per, " vectors a thread");
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
  // The fast path needs whole 16-byte vectors of x, residual and out in every row, and at most
  // kMaxVectorsPerThread of them a thread: the fewest that fit kVectorThreads threads.
  const size_t es = x.element_size();
  const int64_t vec = 16 / static_cast<int64_t>(es), vectors = n / vec;
  const bool vector_ok =
      n % vec == 0 && vectors <= int64_t{kVectorThreads} * kMaxVectorsPerThread &&
      nn::rows_aligned16(x.data_ptr(), xl, es) && nn::rows_aligned16(out.data_ptr(), ol, es) &&
      (!residual || nn::rows_aligned16(residual->data_ptr(), rl, es)) &&
      reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0;
  int per = 1;
  while (per < kMaxVectorsPerThread && vectors > int64_t{kVectorThreads} * per) per *= 2;
  const int64_t used = (vectors + per - 1) / per;  // threads holding a vector
  const int threads = static_cast<int>(std::max<int64_t>(32, (used + 31) / 32 * 32));
  nn::dispatch_float(x.dtype(), op, [&](auto t_tag) {
    using T = decltype(t_tag);
    nn::dispatch_float(weight.dtype(), op, [&](auto w_tag) {
      using W = decltype(w_tag);
      const T* xp = static_cast<const T*>(x.data_ptr());
      T* rp = residual ? static_cast<T*>(residual->data_ptr()) : nullptr;
      const W* wp = static_cast<const W*>(weight.data_ptr());
      T* yp = static_cast<T*>(out.data_ptr());
      if (!vector_ok) {
        rms_norm_kernel<T, W><<<blocks, kThreads, 0, stream>>>(xp, xl, rp, rl, wp, yp, ol, rows, n, eps);
      } else if (residual) {
        launch_vector<T, W, true>(per, threads, blocks, stream, xp, xl, rp, rl, wp, yp, ol, rows,
                                  static_cast<int>(vectors), static_cast<int>(n), eps);
      } else {
        launch_vector<T, W, false>(per, threads, blocks, stream, xp, xl, rp, rl, wp, yp, ol, rows,
                                   static_cast<int>(vectors), static_cast<int>(n), eps);
      }
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
