// Causal prefill attention on the tensor cores through cuBLAS, for prompts long enough that the
// one-warp-per-query kernel (attention.cu) becomes the prefill's largest cost (a 512-token
// Llama-3.1-8B prompt spent half its time there). Per chunk of queries: S = scale Q K^T in f32
// (one strided-batched GEMM per query head of a GQA group, batched over the kv heads), a causal
// (and sliding-window) softmax in f32 rounded to the activation dtype, as Transformers' eager
// attention does, then O = P V. Keys before the chunk's window and after its last query are
// never multiplied. The chunk is sized so S and P stay within kWorkspaceBytes.
#include <cublas_v2.h>

#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/device_utils.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {

cublasHandle_t cublas_handle(int device);  // gemm_q.cu

namespace {

constexpr int64_t kWorkspaceBytes = int64_t{96} << 20;
constexpr int kSoftmaxWarps = 4;

// One warp per score row (head h, chunk query i at position t0 + i; column j is key kstart + j):
// P = softmax of the visible scores, zero elsewhere.
template <typename T>
__global__ void __launch_bounds__(kSoftmaxWarps * 32)
causal_softmax_kernel(const float* __restrict__ S, T* __restrict__ P, int64_t rows, int Tq, int Tk,
                      int t0, int kstart, int window) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSoftmaxWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int t = t0 + static_cast<int>(row % Tq);
  const int lo = (window > 0 ? max(0, t - window + 1) : 0) - kstart, hi = t - kstart;  // columns
  const float* s = S + row * Tk;
  T* p = P + row * Tk;
  float m = -INFINITY;
  for (int j = max(lo, 0) + lane; j <= hi; j += 32) m = fmaxf(m, s[j]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float sum = 0.0f;
  for (int j = max(lo, 0) + lane; j <= hi; j += 32) sum += __expf(s[j] - m);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = 1.0f / sum;
  for (int j = lane; j < Tk; j += 32)
    p[j] = from_float<T>(j >= lo && j <= hi ? __expf(s[j] - m) * inv : 0.0f);
}

void check(cublasStatus_t st, const char* what) {
  MARLIN_CHECK(st == CUBLAS_STATUS_SUCCESS, "attention_prefill", what, " failed (cuBLAS status ",
               static_cast<int>(st), ")");
}

template <typename T>
void run(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int window, Tensor& out,
         cudaStream_t stream) {
  const int device = q.device().index;
  const int T_len = static_cast<int>(q.size(0)), Hq = static_cast<int>(q.size(1));
  const int Hkv = static_cast<int>(k.size(1)), D = static_cast<int>(q.size(2)), G = Hq / Hkv;
  const cudaDataType_t dt = std::is_same_v<T, __half> ? CUDA_R_16F : CUDA_R_16BF;
  // Queries per chunk: S (f32) and P (T) of every head within the workspace budget.
  const int64_t per_query = static_cast<int64_t>(Hq) * T_len * (sizeof(float) + sizeof(T));
  int chunk = static_cast<int>(std::clamp<int64_t>(kWorkspaceBytes / per_query, 16, T_len));
  Tensor S = Tensor::empty({static_cast<int64_t>(Hq) * chunk * T_len}, DType::f32, q.device());
  Tensor P = Tensor::empty({static_cast<int64_t>(Hq) * chunk * T_len}, q.dtype(), q.device());
  cublasHandle_t h = cublas_handle(device);
  check(cublasSetStream(h, stream), "cublasSetStream");
  const T* qp = static_cast<const T*>(q.data_ptr());
  const T* kp = static_cast<const T*>(k.data_ptr());
  const T* vp = static_cast<const T*>(v.data_ptr());
  T* op = static_cast<T*>(out.data_ptr());
  float* sp = S.data<float>();
  T* pp = static_cast<T*>(P.data_ptr());
  const int64_t q_row = static_cast<int64_t>(Hq) * D, kv_row = static_cast<int64_t>(Hkv) * D;
  for (int t0 = 0; t0 < T_len; t0 += chunk) {
    const int Tq = std::min(chunk, T_len - t0);
    const int kstart = window > 0 ? std::max(0, t0 - window + 1) : 0;
    const int Tk = t0 + Tq - kstart;  // keys kstart .. last query of the chunk
    const int64_t head_scores = static_cast<int64_t>(Tq) * Tk;
    const float alpha = scale, one = 1.0f, zero = 0.0f;
    for (int i = 0; i < G; ++i) {
      // Column-major: S_h^T [Tk, Tq] = K_g^T [Tk, D] x Q_h^T [D, Tq], over kv heads g (h = g G + i).
      check(cublasGemmStridedBatchedEx(
                h, CUBLAS_OP_T, CUBLAS_OP_N, Tk, Tq, D, &alpha, kp + kstart * kv_row, dt,
                static_cast<int>(kv_row), D, qp + t0 * q_row + static_cast<int64_t>(i) * D, dt,
                static_cast<int>(q_row), static_cast<int64_t>(G) * D, &zero, sp + i * head_scores,
                CUDA_R_32F, Tk, G * head_scores, Hkv, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "the scores' GEMM");
    }
    const int64_t rows = static_cast<int64_t>(Hq) * Tq;
    causal_softmax_kernel<T><<<static_cast<unsigned>((rows + kSoftmaxWarps - 1) / kSoftmaxWarps),
                               kSoftmaxWarps * 32, 0, stream>>>(sp, pp, rows, Tq, Tk, t0, kstart, window);
    MARLIN_CUDA_CHECK_LAUNCH("attention_prefill");
    for (int i = 0; i < G; ++i) {
      // Column-major: O_h^T [D, Tq] = V_g^T [D, Tk] x P_h^T [Tk, Tq].
      check(cublasGemmStridedBatchedEx(
                h, CUBLAS_OP_N, CUBLAS_OP_N, D, Tq, Tk, &one, vp + kstart * kv_row, dt,
                static_cast<int>(kv_row), D, pp + i * head_scores, dt, Tk, G * head_scores, &zero,
                op + t0 * q_row + static_cast<int64_t>(i) * D, dt, static_cast<int>(q_row),
                static_cast<int64_t>(G) * D, Hkv, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "the values' GEMM");
    }
  }
}

}  // namespace

bool attention_prefill_gemm(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            int window, Tensor& out) {
  if (q.size(0) < kPrefillGemmMinTokens || (q.dtype() != DType::f16 && q.dtype() != DType::bf16))
    return false;
  auto stream = static_cast<cudaStream_t>(current_stream(q.device().index).handle);
  if (q.dtype() == DType::f16) run<__half>(q, k, v, scale, window, out, stream);
  else run<__nv_bfloat16>(q, k, v, scale, window, out, stream);
  return true;
}

}  // namespace marlin::cuda
