// Quantized GEMM on CUDA over the canonical layout.
//
// Small M (decode): a fused split-K kernel. A warp covers 128 columns with one 16-byte load of
// packed words per thread per row, so every weight byte is read once, coalesced; the 8 warps of
// a block share the columns and split the block's K range, and blocks split K further when the
// columns alone cannot fill the GPU. The last block of a column tile to finish sums the split
// partials in a fixed order (deterministic), so one launch does everything.
// Codes become floats with a few integer operations (no conversion instructions): the code's
// bits are placed into an f32's sign/exponent/mantissa fields, which yields the value times a
// power of two that is folded into A (staged in shared memory) and the scales.
//
// Larger M: dequantize to A's dtype and run cuBLAS (tensor cores).
#include <cublas_v2.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gemm_q_tile.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_codec.cuh"
#include "kernels/cuda/split_k.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {

// One cuBLAS handle per device, made on first use (the GEMMs here, attention_prefill_gemm.cu).
cublasHandle_t cublas_handle(int device) {
  static std::mutex mutex;
  static std::vector<cublasHandle_t> handles(64, nullptr);
  std::lock_guard<std::mutex> lock(mutex);
  cublasHandle_t& h = handles.at(static_cast<size_t>(device));
  if (!h) {
    MARLIN_CUDA_CHECK(cudaSetDevice(device), "cublas");
    MARLIN_CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublas", "cublasCreate failed on cuda:", device);
  }
  return h;
}

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kStageK = 256;  // k values of A staged in shared memory per step
constexpr int kMaxSkinnyM = 8;

using quant_detail::Codec;
using quant_detail::decode_word;
using quant_detail::load_words;

// 1 / rms of each of A's first M rows (K values), in the order of norm.cu's vector kernel for
// rows of at most kThreads 16-byte vectors: thread i squares and sums values 8i .. 8i + 7 in
// turn, then the block's sum; so the normalized values below are bit for bit rms_norm's.
template <int MT, typename TA>
__device__ void rms_inverses(const TA* __restrict__ A, int M, int K, float eps, float* inv) {
  __shared__ float scratch[32];
#pragma unroll 1
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    float ss = 0.0f;
    if (threadIdx.x * 8 < K) {
      const TA* v = A + static_cast<int64_t>(m) * K + threadIdx.x * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float a = to_float(v[e]);
        ss += a * a;
      }
    }
    ss = nn::block_reduce<false>(ss, scratch);
    if (threadIdx.x == 0) inv[m] = 1.0f / sqrtf(ss / static_cast<float>(K) + eps);
  }
  __syncthreads();
}

// With norm_w: A's rows are RMS-normalized first (weight norm_w, eps), as rms_norm would write
// them (K a multiple of 8, at most 8 kThreads): one launch for the norm and the projection.
template <QuantFormat F, int MT, int CPT, typename TA>
__global__ void __launch_bounds__(kThreads)
    gemm_q_skinny_kernel(const TA* __restrict__ A, const uint32_t* __restrict__ packed,
                         const __half* __restrict__ scales, const void* __restrict__ bias,
                         BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                         unsigned* __restrict__ counters, int M, int N, int K, int group_size,
                         int k_per_split, const TA* __restrict__ norm_w, float norm_eps) {
  using Cd = Codec<F>;
  constexpr int P = Cd::P;
  constexpr int kRowsPerStep = kStageK / P;
  constexpr int kRowsPerWarp = kRowsPerStep / kWarps;
  constexpr int kTileCols = 32 * CPT;
  static_assert(kRowsPerWarp >= 1, "stage too small");

  __shared__ float a_s[MT][kStageK];
  __shared__ float red[kWarps][MT][kTileCols];
  __shared__ float inv_rms[MT];
  TRACE_START
  TRACE_WAITED
  if (norm_w != nullptr) rms_inverses<MT>(A, M, K, norm_eps, inv_rms);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col0 = blockIdx.x * kTileCols + lane * CPT;
  const bool active = col0 < N;
  const int kbeg = blockIdx.y * k_per_split;
  const int kend = min(K, kbeg + k_per_split);

  float acc[MT][CPT];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int c = 0; c < CPT; ++c) acc[m][c] = 0.0f;

  for (int kc = kbeg; kc < kend; kc += kStageK) {
    __syncthreads();
    for (int i = threadIdx.x; i < MT * kStageK; i += kThreads) {
      const int m = i / kStageK, kk = i % kStageK;
      float v = 0.0f;
      if (m < M && kc + kk < kend) {
        v = to_float(A[static_cast<int64_t>(m) * K + kc + kk]);
        if (norm_w != nullptr) v = nn::round_to<TA>(to_float(norm_w[kc + kk]) * nn::round_to<TA>(v * inv_rms[m]));
        v *= Cd::a_prescale;
      }
      a_s[m][kk] = v;
    }
    __syncthreads();
    if (!active) continue;
    uint32_t words[kRowsPerWarp][CPT];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int k = kc + (warp * kRowsPerWarp + i) * P;
      if (k < kend) {
        load_words<CPT>(packed + static_cast<int64_t>(k / P) * N + col0, words[i]);
      } else {
#pragma unroll
        for (int c = 0; c < CPT; ++c) words[i][c] = 0;
      }
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int kl = (warp * kRowsPerWarp + i) * P;
      const int k = kc + kl;
      if (k >= kend) break;
      const __half* srow = scales + static_cast<int64_t>(k / group_size) * N + col0;
#pragma unroll
      for (int c = 0; c < CPT; ++c) {
        const float s = __half2float(srow[c]) * Cd::s_prescale;
        float w[P];
        decode_word<F>(words[i][c], s, w);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
          for (int j = 0; j < P; ++j) acc[m][c] = fmaf(a_s[m][kl + j], w[j], acc[m][c]);
        }
      }
    }
  }

  // Sum the warps' partial dot products, then store (or split-K partials).
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int c = 0; c < CPT; ++c) red[warp][m][lane * CPT + c] = acc[m][c];
  __syncthreads();
  SplitKEpilogue<TA> epilogue{C, partials, counters, bias, bias_kind, M, N};
  const bool split = gridDim.y > 1;
  for (int i = threadIdx.x; i < MT * kTileCols; i += kThreads) {
    const int m = i / kTileCols, cl = i % kTileCols;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w][m][cl];
    epilogue.store(m, blockIdx.x * kTileCols + cl, v, split);
  }
  if (!split) {
    TRACE_END(skinny)
    return;
  }
  const int col_begin = blockIdx.x * kTileCols;
  epilogue.reduce_if_last(col_begin, min(N, col_begin + kTileCols), MT);
  TRACE_END(skinny)
}

template <typename T>
__global__ void add_bias_kernel(T* __restrict__ C, const void* __restrict__ bias, BiasKind kind,
                                int64_t M, int64_t N) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    C[i] = from_float<T>(to_float(C[i]) + load_bias(bias, kind, i % N));
}


template <QuantFormat F, int MT, int CPT, typename TA>
void launch_skinny(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                   cudaStream_t stream, const Tensor& norm_w = Tensor(), float norm_eps = 0.0f) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int tiles = (N + 32 * CPT - 1) / (32 * CPT);
  // Enough blocks for about four per SM, but at least one stage of K per block.
  const int sms = multiprocessor_count(device);
  int splits = std::max(1, std::min((4 * sms + tiles - 1) / tiles, K / kStageK));
  int k_per_split = (K + splits - 1) / splits;
  k_per_split = (k_per_split + kStageK - 1) / kStageK * kStageK;
  splits = (K + k_per_split - 1) / k_per_split;
  const SplitKBuffers buffers = split_k_buffers(device, splits, M, N, tiles);
  gemm_q_skinny_kernel<F, MT, CPT, TA><<<dim3(tiles, splits), kThreads, 0, stream>>>(
      static_cast<const TA*>(A.data_ptr()), W.packed.data<uint32_t>(),
      static_cast<const __half*>(W.scales.data_ptr()), bias.defined() ? bias.data_ptr() : nullptr,
      bias_kind(bias.dtype(), bias.defined()), static_cast<TA*>(C.data_ptr()), buffers.partials,
      buffers.counters, M, N, K, W.group_size, k_per_split,
      norm_w.defined() ? static_cast<const TA*>(norm_w.data_ptr()) : nullptr, norm_eps);
  MARLIN_CUDA_CHECK_LAUNCH("gemm_q");
}

template <QuantFormat F, typename TA>
void dispatch_skinny(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                     cudaStream_t stream, const Tensor& norm_w = Tensor(), float norm_eps = 0.0f) {
  const int64_t M = A.size(0);
  const bool vector4 = W.N % 4 == 0 && reinterpret_cast<uintptr_t>(W.packed.data_ptr()) % 16 == 0;
#define MARLIN_SKINNY_M(MT)                                                            \
  if (M <= MT) {                                                                       \
    if (vector4) launch_skinny<F, MT, 4, TA>(A, W, bias, C, stream, norm_w, norm_eps); \
    else launch_skinny<F, MT, 1, TA>(A, W, bias, C, stream, norm_w, norm_eps);         \
    return;                                                                            \
  }
  MARLIN_SKINNY_M(1)
  MARLIN_SKINNY_M(2)
  MARLIN_SKINNY_M(4)
  MARLIN_SKINNY_M(8)
#undef MARLIN_SKINNY_M
}

// C[M, N] = A[M, K] @ B[K, N], all row-major, through cuBLAS's column-major view:
// C^T[N, M] = B^T[N, K] @ A^T[K, M].
void cublas_gemm(const Tensor& A, const void* B, int64_t K, int64_t N, Tensor& C, cudaStream_t stream) {
  const int device = A.device().index;
  cublasHandle_t h = cublas_handle(device);
  cublasSetStream(h, stream);
  const cudaDataType_t t = A.dtype() == DType::f16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t st = cublasGemmEx(
      h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(A.size(0)),
      static_cast<int>(K), &alpha, B, t, static_cast<int>(N), A.data_ptr(), t, static_cast<int>(K),
      &beta, C.data_ptr(), t, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  MARLIN_CHECK(st == CUBLAS_STATUS_SUCCESS, "gemm", "cublasGemmEx failed (status ", static_cast<int>(st),
               ") for M=", A.size(0), ", N=", N, ", K=", K);
}

void add_bias(Tensor& C, const Tensor& bias, cudaStream_t stream) {
  if (!bias.defined()) return;
  const int64_t total = C.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  MARLIN_DISPATCH_FLOAT16(C.dtype(), T, "gemm", {
    add_bias_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(C.data_ptr()), bias.data_ptr(),
                                                   bias_kind(bias.dtype(), true), C.size(0), C.size(1));
  });
  MARLIN_CUDA_CHECK_LAUNCH("gemm");
}

}  // namespace

SplitKBuffers split_k_buffers(int device, int splits, int M, int N, int column_blocks) {
  if (splits <= 1) return {};
  struct Scratch {
    Tensor partials, counters;
  };
  static std::mutex mutex;
  static std::vector<Scratch> per_device(64);
  std::lock_guard<std::mutex> lock(mutex);
  Scratch& ws = per_device.at(static_cast<size_t>(device));
  const int64_t floats = static_cast<int64_t>(splits) * M * N;
  if (!ws.partials.defined() || ws.partials.numel() < floats)
    ws.partials = Tensor::empty({std::max<int64_t>(floats, 1 << 20)}, DType::f32, Device::cuda(device));
  if (!ws.counters.defined() || ws.counters.numel() < column_blocks)
    ws.counters = Tensor::zeros({std::max<int64_t>(column_blocks, 4096)}, DType::u32, Device::cuda(device));
  return {ws.partials.data<float>(), ws.counters.data<unsigned>()};
}

int resident_blocks_per_sm(const void* kernel, int threads, int smem_bytes) {
  MARLIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes), "gemm_q");
  int n = 0;
  MARLIN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem_bytes), "gemm_q");
  return std::max(n, 1);
}

TiledSplits plan_tiled_splits(int M, int K, int bits, int units, int capacity, int column_blocks) {
  const int by_traffic = static_cast<int>(static_cast<int64_t>(K) * bits / (64 * static_cast<int64_t>(M)));
  const int max_splits = std::clamp(by_traffic, 1, units / tile::kUnitsAlign);
  const int splits = std::clamp(capacity / column_blocks, 1, max_splits);
  int units_per_split = (units + splits - 1) / splits;
  units_per_split = (units_per_split + tile::kUnitsAlign - 1) / tile::kUnitsAlign * tile::kUnitsAlign;
  return {(units + units_per_split - 1) / units_per_split, units_per_split};
}

bool pdl_enabled(int device) {
  static std::mutex mutex;
  static std::vector<int> state(64, -1);  // -1 unknown, 0 off, 1 on
  std::lock_guard<std::mutex> lock(mutex);
  int& on = state.at(static_cast<size_t>(device));
  if (on < 0) {
    int major = 0;
    MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "pdl_enabled");
    on = major >= 9 && !env_is("MARLIN_PDL", "0");
  }
  return on == 1;
}

unsigned* arrival_counters(CounterUser user, int device, int64_t n) {
  constexpr int kUsers = 2;
  static std::mutex mutex;
  static std::vector<Tensor> per_device(64 * kUsers);
  std::lock_guard<std::mutex> lock(mutex);
  Tensor& t = per_device.at(static_cast<size_t>(device) * kUsers + static_cast<size_t>(user));
  if (!t.defined() || t.numel() < n) t = Tensor::zeros({std::max<int64_t>(n, 4096)}, DType::u32, Device::cuda(device));
  return t.data<unsigned>();
}

int multiprocessor_count(int device) {
  static std::mutex mutex;
  static std::vector<int> counts(64, 0);
  std::lock_guard<std::mutex> lock(mutex);
  int& n = counts.at(static_cast<size_t>(device));
  if (n == 0) MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "multiprocessor_count");
  return n;
}

namespace {
bool small_decode_tiled = !env_is("MARLIN_SMALL_DECODE_TILED", "0");  // set_small_decode_tiled

// Whether gemm_q sends a decode-size product of W (M <= kMaxSkinnyM) to the canonical-layout
// split-K kernel, not the tile-layout stream kernel: small weights with MARLIN_SMALL_DECODE_TILED=0.
bool small_weight_on_split_k(const QuantizedWeight& W) {
  return W.nbytes() <= (size_t{4} << 20) && !tiled_gemm_forced() && !small_decode_tiled;
}
}  // namespace

void set_small_decode_tiled(bool on) { small_decode_tiled = on; }

void gemm_q(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  // Small weights at decode sizes go to the tile-layout stream kernel too. Alone, the
  // canonical-layout split-K kernel below had less fixed cost (H200: 2048x1536 and 1536x2048 at
  // M = 1); inside a decode step the stream kernel's weights stream during the previous kernel
  // (programmatic launch), which that kernel's plain launch cannot: GLM-4.7-Flash batch 1 decoded
  // at 262.2 / 262.0 tok/s against 239.6 / 241.3 (H200, sixteenth session).
  // MARLIN_SMALL_DECODE_TILED=0 keeps them on the split-K kernel, to measure against.
  const bool small_decode = A.size(0) <= kMaxSkinnyM && small_weight_on_split_k(W);
  if (!small_decode && gemm_q_tiled(A, W, bias, C)) return;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  if (A.size(0) <= kMaxSkinnyM) {
    MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
      switch (W.format) {
        case QuantFormat::fp4_e2m1: dispatch_skinny<QuantFormat::fp4_e2m1, TA>(A, W, bias, C, stream); break;
        case QuantFormat::fp8_e4m3: dispatch_skinny<QuantFormat::fp8_e4m3, TA>(A, W, bias, C, stream); break;
        case QuantFormat::int2: dispatch_skinny<QuantFormat::int2, TA>(A, W, bias, C, stream); break;
      }
    });
    return;
  }
  // Prefill: one dequantization pass, then tensor-core GEMM. The buffer comes from the caching
  // allocator, so repeated calls do not reach cudaMalloc.
  Tensor dense = Tensor::empty({W.K, W.N}, A.dtype(), A.device());
  dequantize(W, dense);
  cublas_gemm(A, dense.data_ptr(), W.K, W.N, C, stream);
  add_bias(C, bias, stream);
}

bool gemm_q_rms_normed(const Tensor& A, const Tensor& norm_weight, float eps, const QuantizedWeight& W,
                       const Tensor& bias, Tensor& C) {
  // The decode sizes that gemm_q sends to the skinny kernel, rows of whole 16-byte vectors that
  // one block's threads cover (the order in which rms_norm sums them), a weight of A's dtype.
  // One row: each row's sum is one block reduction before the first stage, and GLM-4.7-Flash
  // decoded faster fused only at batch 1 (240.7 against 234.9 tok/s; batch 4 575.4 against
  // 579.7, batch 8 762 against 772).
  // Only where gemm_q would take that kernel: weights with a tile layout go to the stream kernel
  // (small_decode_tiled), the norm then in its own launch.
  constexpr int64_t kMaxNormedM = 1;
  const int64_t K = A.size(1);
  if (A.size(0) > kMaxNormedM || W.nbytes() > (size_t{4} << 20) || tiled_gemm_forced() ||
      (small_decode_tiled && W.tiled.defined()) ||
      K % 8 != 0 || K / 8 > kThreads || norm_weight.dtype() != A.dtype() || !norm_weight.is_contiguous() ||
      (A.dtype() != DType::f16 && A.dtype() != DType::bf16))
    return false;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
    switch (W.format) {
      case QuantFormat::fp4_e2m1: dispatch_skinny<QuantFormat::fp4_e2m1, TA>(A, W, bias, C, stream, norm_weight, eps); break;
      case QuantFormat::fp8_e4m3: dispatch_skinny<QuantFormat::fp8_e4m3, TA>(A, W, bias, C, stream, norm_weight, eps); break;
      case QuantFormat::int2: dispatch_skinny<QuantFormat::int2, TA>(A, W, bias, C, stream, norm_weight, eps); break;
    }
  });
  return true;
}

bool gemm_q_silu_mul(const Tensor& gate, const Tensor& up, const QuantizedWeight& W, const Tensor& bias,
                     Tensor& C) {
  // Where gemm_q takes the stream kernel for one row: a tile layout, and not the small weights'
  // split-K kernel. MARLIN_FUSE_SILU_GEMM=0 keeps silu_mul's own launch, to measure against.
  static const bool fuse = !env_is("MARLIN_FUSE_SILU_GEMM", "0");
  if (!fuse || small_weight_on_split_k(W) || !W.tiled.defined() || gate.size(0) != 1) return false;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(gate.device().index).handle);
  return gemm_q_stream_silu_mul(gate, up, W, bias, C, stream);
}

void gemm(const Tensor& A, const Tensor& B, const Tensor& bias, Tensor& C) {
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  cublas_gemm(A, B.data_ptr(), B.size(0), B.size(1), C, stream);
  add_bias(C, bias, stream);
}

void append_gemm_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_fp4_m1_f16", reinterpret_cast<const void*>(&gemm_q_skinny_kernel<QuantFormat::fp4_e2m1, 1, 4, __half>)});
  out.push_back({"gemm_fp8_m1_f16", reinterpret_cast<const void*>(&gemm_q_skinny_kernel<QuantFormat::fp8_e4m3, 1, 4, __half>)});
  out.push_back({"gemm_int2_m1_f16", reinterpret_cast<const void*>(&gemm_q_skinny_kernel<QuantFormat::int2, 1, 4, __half>)});
  out.push_back({"add_bias_f16", reinterpret_cast<const void*>(&add_bias_kernel<__half>)});
}

const std::vector<BuiltinKernel>& builtin_kernels() {
  static const std::vector<BuiltinKernel> kernels = [] {
    std::vector<BuiltinKernel> k;
    append_quant_kernels(k);
    append_gemm_kernels(k);
    append_gemm_mma_kernels(k);
    append_gemm_stream_kernels(k);
    append_gemm_batch_kernels(k);
    return k;
  }();
  return kernels;
}

}  // namespace marlin::cuda
