// CUDA quantizer and dequantizer. The quantizer runs the same scalar code as the CPU reference
// (quant/formats.h; this file is built with -fmad=false) so both give identical codes and scales.
#include "core/cuda_check.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "marlin/stream.h"
#include "quant/formats.h"

namespace marlin::cuda {
namespace {

// One thread per (group, column): columns are adjacent across a warp, so loads coalesce.
template <typename T>
__global__ void quantize_kernel(const T* __restrict__ weight, int64_t K, int64_t N,
                                QuantFormat format, QuantizeOptions opt,
                                uint32_t* __restrict__ packed, uint16_t* __restrict__ scales,
                                int* __restrict__ bad_value) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int g = opt.group_size;
  const int bits = format_bits(format), P = 32 / bits;
  for (int64_t group = blockIdx.y; group < K / g; group += gridDim.y) {
    const T* col = weight + group * g * N + n;
    auto load = [&](int i) { return to_float(col[static_cast<int64_t>(i) * N]); };
    bool finite = true;
    for (int i = 0; i < g; ++i) finite &= isfinite(load(i));
    if (!finite) {
      atomicExch(bad_value, 1);
      return;
    }
    const float scale = quant::choose_group_scale(format, load, g, opt);
    if (!isfinite(scale)) atomicExch(bad_value, 2);
    scales[group * N + n] = float_to_half_bits(scale);
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < g; i += P) {
      uint32_t word = 0;
      for (int v = 0; v < P; ++v) word |= quant::encode(format, load(i + v) * inv) << (bits * v);
      packed[(group * g + i) / P * N + n] = word;
    }
  }
}

// Code -> float without branches or tables: the code's bits go into an f32's fields, giving the
// value times a power of two that one exact multiply removes (FP8's NaN code, which the
// quantizers never write, would read as 480).
template <QuantFormat F>
__device__ __forceinline__ float decode_code(uint32_t c) {
  if constexpr (F == QuantFormat::fp4_e2m1) {
    return __uint_as_float(((c & 8u) << 28) | ((c & 7u) << 22)) * 8.5070591730234616e37f;  // 2^126
  } else if constexpr (F == QuantFormat::fp8_e4m3) {
    return __uint_as_float(((c & 0x80u) << 24) | ((c & 0x7fu) << 20)) * 1.329227995784916e36f;  // 2^120
  } else {
    return static_cast<float>(c) - 1.5f;
  }
}

// One thread per packed row and CPT adjacent columns: decodes P values down each column; with
// CPT = 2 the stores are pairs, so a warp writes 128 contiguous bytes per row.
template <QuantFormat F, int CPT, typename TOut>
__global__ void dequantize_kernel(const uint32_t* __restrict__ packed,
                                  const uint16_t* __restrict__ scales, int64_t K, int64_t N,
                                  int group_size, TOut* __restrict__ out) {
  constexpr int bits = format_bits(F), P = 32 / bits;
  constexpr uint32_t mask = (1u << bits) - 1u;
  const int64_t col_groups = N / CPT;
  const int64_t items = K / P * col_groups;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / col_groups, n0 = (i % col_groups) * CPT;
    uint32_t q[CPT];
    float s[CPT];
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
      q[c] = __ldg(packed + row * N + n0 + c);
      s[c] = half_bits_to_float(__ldg(scales + (row * P / group_size) * N + n0 + c));
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      TOut* dst = out + (row * P + j) * N + n0;
#pragma unroll
      for (int c = 0; c < CPT; ++c) dst[c] = from_float<TOut>(decode_code<F>((q[c] >> (bits * j)) & mask) * s[c]);
    }
  }
}

// Eight adjacent columns a thread (N a multiple of 8): two 16-byte loads of words and one of
// scales a packed row, then a 16-byte store (32 for f32) a decoded row, a warp writing 256
// contiguous columns. The prompt GEMMs dequantize a whole weight before cuBLAS, so this pass is
// their overhead; the pairs kernel above stored 4 bytes at a time and divided 64-bit indices
// (H200, 8192x28672 FP8 at M = 1024: 864.3 against 957.9 us; Llama-3.1-8B FP8 prefill of 2048
// tokens 28829.1 against 27755.9 tok/s; FP4 and INT2 within run-to-run spread).
template <QuantFormat F, typename TOut>
__global__ void __launch_bounds__(128) dequantize_vec8_kernel(const uint32_t* __restrict__ packed,
                                                              const uint16_t* __restrict__ scales, int64_t N,
                                                              int packed_rows, int group_size, TOut* __restrict__ out) {
  constexpr int bits = format_bits(F), P = 32 / bits;
  constexpr uint32_t mask = (1u << bits) - 1u;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (n0 >= N) return;
  for (int row = blockIdx.y; row < packed_rows; row += gridDim.y) {
    const uint4* words = reinterpret_cast<const uint4*>(packed + static_cast<int64_t>(row) * N + n0);
    const uint4 w0 = __ldg(words), w1 = __ldg(words + 1);
    const int64_t group = static_cast<int64_t>(row) * P / group_size;
    const uint4 sv = __ldg(reinterpret_cast<const uint4*>(scales + group * N + n0));
    const uint32_t q[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    const uint32_t sp[4] = {sv.x, sv.y, sv.z, sv.w};
    float sc[8];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      sc[2 * c] = half_bits_to_float(static_cast<uint16_t>(sp[c] & 0xffffu));
      sc[2 * c + 1] = half_bits_to_float(static_cast<uint16_t>(sp[c] >> 16));
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      alignas(16) TOut v[8];
#pragma unroll
      for (int c = 0; c < 8; ++c) v[c] = from_float<TOut>(decode_code<F>((q[c] >> (bits * j)) & mask) * sc[c]);
      uint4* dst = reinterpret_cast<uint4*>(out + (static_cast<int64_t>(row) * P + j) * N + n0);
#pragma unroll
      for (int k = 0; k < static_cast<int>(sizeof(v) / 16); ++k) dst[k] = reinterpret_cast<const uint4*>(v)[k];
    }
  }
}

template <QuantFormat F, typename TOut>
void launch_dequantize(const QuantizedWeight& w, TOut* out, cudaStream_t stream) {
  const int P = format_values_per_word(F);
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (w.N % 8 == 0 && aligned(w.packed.data_ptr()) && aligned(w.scales.data_ptr()) && aligned(out)) {
    const int threads = 128;
    const auto packed_rows = static_cast<int>(w.K / P);
    const dim3 grid(static_cast<unsigned>((w.N / 8 + threads - 1) / threads),
                    static_cast<unsigned>(std::min(packed_rows, 65535)));
    dequantize_vec8_kernel<F, TOut><<<grid, threads, 0, stream>>>(w.packed.data<uint32_t>(),
                                                                  static_cast<const uint16_t*>(w.scales.data_ptr()),
                                                                  w.N, packed_rows, w.group_size, out);
    return;
  }
  const int threads = 256;
  const auto* packed = w.packed.data<uint32_t>();
  const auto* scales = static_cast<const uint16_t*>(w.scales.data_ptr());
  const bool pairs = w.N % 2 == 0;
  const int64_t items = w.K / P * (pairs ? w.N / 2 : w.N);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((items + threads - 1) / threads, 65535 * 8));
  if (pairs) dequantize_kernel<F, 2, TOut><<<blocks, threads, 0, stream>>>(packed, scales, w.K, w.N, w.group_size, out);
  else dequantize_kernel<F, 1, TOut><<<blocks, threads, 0, stream>>>(packed, scales, w.K, w.N, w.group_size, out);
}

template <typename TOut>
void dequantize_as(const QuantizedWeight& w, TOut* out, cudaStream_t stream) {
  switch (w.format) {
    case QuantFormat::fp4_e2m1: launch_dequantize<QuantFormat::fp4_e2m1>(w, out, stream); break;
    case QuantFormat::fp8_e4m3: launch_dequantize<QuantFormat::fp8_e4m3>(w, out, stream); break;
    case QuantFormat::int2: launch_dequantize<QuantFormat::int2>(w, out, stream); break;
  }
}

cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_stream(t.device().index).handle);
}

}  // namespace

void quantize(const Tensor& weight, QuantFormat format, const QuantizeOptions& options,
              QuantizedWeight& out) {
  constexpr const char* op = "quantize";
  const int64_t K = weight.size(0), N = weight.size(1);
  cudaStream_t stream = stream_of(weight);
  Tensor flag = Tensor::zeros({1}, DType::i32, weight.device());
  const dim3 block(128);
  const dim3 grid(static_cast<unsigned>((N + 127) / 128),
                  static_cast<unsigned>(std::min<int64_t>(K / options.group_size, 65535)));
  auto* packed = out.packed.data<uint32_t>();
  auto* scales = static_cast<uint16_t*>(out.scales.data_ptr());
  switch (weight.dtype()) {
    case DType::f32:
      quantize_kernel<<<grid, block, 0, stream>>>(weight.data<float>(), K, N, format, options, packed, scales, flag.data<int>());
      break;
    case DType::f16:
      quantize_kernel<<<grid, block, 0, stream>>>(static_cast<const __half*>(weight.data_ptr()), K, N, format, options, packed, scales, flag.data<int>());
      break;
    default:
      quantize_kernel<<<grid, block, 0, stream>>>(static_cast<const __nv_bfloat16*>(weight.data_ptr()), K, N, format, options, packed, scales, flag.data<int>());
      break;
  }
  MARLIN_CUDA_CHECK_LAUNCH(op);
  // Quantization is a load-time step: one synchronisation to report bad weights is fine.
  const int bad = flag.to(Device::cpu()).data<int>()[0];
  MARLIN_CHECK(bad != 1, op, "weight ", weight.describe(), " contains NaN or infinity");
  MARLIN_CHECK(bad != 2, op, "weight ", weight.describe(),
               " has a group whose absmax is too large for an fp16 scale");
}

void dequantize(const QuantizedWeight& w, Tensor& out) {
  cudaStream_t stream = stream_of(w.packed);
  switch (out.dtype()) {
    case DType::f32: dequantize_as(w, out.data<float>(), stream); break;
    case DType::f16: dequantize_as(w, static_cast<__half*>(out.data_ptr()), stream); break;
    default: dequantize_as(w, static_cast<__nv_bfloat16*>(out.data_ptr()), stream); break;
  }
  MARLIN_CUDA_CHECK_LAUNCH("dequantize");
}

void append_quant_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"quantize_f32", reinterpret_cast<const void*>(&quantize_kernel<float>)});
  out.push_back({"quantize_f16", reinterpret_cast<const void*>(&quantize_kernel<__half>)});
  out.push_back({"quantize_bf16", reinterpret_cast<const void*>(&quantize_kernel<__nv_bfloat16>)});
  out.push_back({"dequantize_fp4_f16", reinterpret_cast<const void*>(&dequantize_kernel<QuantFormat::fp4_e2m1, 2, __half>)});
  out.push_back({"dequantize_fp8_f16", reinterpret_cast<const void*>(&dequantize_kernel<QuantFormat::fp8_e4m3, 2, __half>)});
  out.push_back({"dequantize_int2_f16", reinterpret_cast<const void*>(&dequantize_kernel<QuantFormat::int2, 2, __half>)});
}

}  // namespace marlin::cuda
