// Tensor-core quantized GEMM (f16 or bf16 activations, M up to 64) over weights repacked once
// into a tile layout (ops::prepare_for_gemm).
//
// Tile layout: K is cut into units of 32 rows and N into slabs of 64 columns. For one (unit,
// slab), lane L of a warp owns the mma.m16n8k16 B fragments of 2 k16 steps x 8 n8 tiles: for
// step s, tile t and half h, the pair {B[k][n], B[k+1][n]} with k = 32u + 16s + 2(L%4) + 8h and
// n = 64b + 8t + L/4. Those 32 pairs are stored as NW consecutive 16-byte words per lane (the
// warp reads 512 contiguous bytes per word), each u32 holding 16/bits pairs placed so that one
// shift and one or two logic ops turn a pair into a half2 without conversion instructions:
//   FP4 pair p: nibbles 3-p and 7-p   -> (x & 0x80008000) | ((x >> 3) & 0x0e000e00), x = q << 4p
//                                         = value * 2^-14 (the 2^14 is folded into the scale)
//   FP8 pair p: bytes 1-p and 3-p     -> (x & 0x80008000) | ((x >> 1) & 0x3f803f80), x = q << 8p
//                                         = value * 2^-8
//   INT2 pair p: bits 2p and 16 + 2p  -> ((q >> 2p) & 0x00030003) << 4 | 0x54005400 = 64 + c,
//                                         then minus 65.5 (exact) = c - 1.5
// and the pair is multiplied by its column's fp16 scale (an f16 rounding of the weight, as
// Marlin does). A is staged in shared memory and read with ldmatrix; accumulation is f32.
// K splits across blocks are summed by the last block of each column range (deterministic).
#include <algorithm>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/builtin_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/split_k.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kUnitK = 32;
constexpr int kSlabN = 64;
// k values of A staged in shared memory per step: 33 KB whatever the M tile.
template <int MT>
constexpr int chunk_k() {
  return 1024 / MT;
}
constexpr int kRowPad = 8;            // halves of padding per A row: conflict-free ldmatrix
constexpr int kMaxMmaM = 64;
// The tile layout pads K to whole rounds of units (zero codes, multiplied by zero activations),
// so the main loop needs no per-unit bounds checks.
constexpr int kUnitsAlign = 8;

bool force_tiled_gemm = false;

template <QuantFormat F>
struct MmaCodec;

template <>
struct MmaCodec<QuantFormat::fp4_e2m1> {
  static constexpr int kWords = 2;      // 16-byte words per lane per unit
  static constexpr int kPairsPerU32 = 4;
  static constexpr float kScaleBias = 16384.0f;
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    const uint32_t x = q << (4 * p);
    return (x & 0x80008000u) | ((x >> 3) & 0x0e000e00u);
  }
};

template <>
struct MmaCodec<QuantFormat::fp8_e4m3> {
  static constexpr int kWords = 4;
  static constexpr int kPairsPerU32 = 2;
  static constexpr float kScaleBias = 256.0f;
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    const uint32_t x = q << (8 * p);
    return (x & 0x80008000u) | ((x >> 1) & 0x3f803f80u);
  }
};

template <>
struct MmaCodec<QuantFormat::int2> {
  static constexpr int kWords = 1;
  static constexpr int kPairsPerU32 = 8;
  static constexpr float kScaleBias = 1.0f;
  __device__ __forceinline__ static uint32_t pair(uint32_t q, int p) {
    return (((q >> (2 * p)) & 0x00030003u) << 4) | 0x54005400u;
  }
};

__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 as_half2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// Pair q of a lane's unit data (2 steps x 8 tiles x 2 halves), scaled, as an mma B register.
// Called from fully unrolled loops, so q, the word index and the shifts are constants.
template <QuantFormat F>
__device__ __forceinline__ uint32_t b_register(const uint32_t (&w)[MmaCodec<F>::kWords * 4], int q,
                                               __half2 scale) {
  using Cd = MmaCodec<F>;
  const uint32_t raw = Cd::pair(w[q / Cd::kPairsPerU32], q % Cd::kPairsPerU32);
  __half2 v = as_half2(raw);
  if constexpr (F == QuantFormat::int2) v = __hsub2(v, __float2half2_rn(65.5f));
  return as_u32(__hmul2(v, scale));
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Units of weights per round: 64 bytes per lane for every format. Two rounds are in registers
// at a time (one computing, one loading).
template <QuantFormat F>
constexpr int units_ahead() {
  return 4 / MmaCodec<F>::kWords;
}

// bf16 activations run on the f16 tensor cores: staged as f16 times 2^-4 (saturating), which
// keeps values up to about 1e6 finite and bf16's 8 bits of precision exact down to about 1e-3;
// the accumulators are multiplied back before the store.
constexpr float kBf16Prescale = 0.0625f;

template <typename TA>
__device__ __forceinline__ uint4 stage_as_f16(uint4 v) {
  if constexpr (std::is_same_v<TA, __half>) {
    return v;
  } else {
    const __nv_bfloat162* in = reinterpret_cast<const __nv_bfloat162*>(&v);
    uint4 out;
    __half2* o = reinterpret_cast<__half2*>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __bfloat1622float2(in[i]);
      f.x = fminf(fmaxf(f.x * kBf16Prescale, -65504.0f), 65504.0f);
      f.y = fminf(fmaxf(f.y * kBf16Prescale, -65504.0f), 65504.0f);
      o[i] = __float22half2_rn(f);
    }
    return out;
  }
}

template <QuantFormat F, int MT, typename TA>
__global__ void __launch_bounds__(kMmaThreads, MT == 1 ? 4 : MT == 2 ? 3 : 2)
    gemm_q_mma_kernel(const TA* __restrict__ A, const uint4* __restrict__ tiled,
                      const __half* __restrict__ scales, const void* __restrict__ bias,
                      BiasKind bias_kind, TA* __restrict__ C, float* __restrict__ partials,
                      unsigned* __restrict__ counters, int M, int N, int K, int padded_k,
                      int group_size, int k_per_split, int slabs) {
  using Cd = MmaCodec<F>;
  constexpr int kW = Cd::kWords;
  constexpr int kAhead = units_ahead<F>();
  constexpr int kChunkK = chunk_k<MT>();
  __shared__ __align__(16) __half a_s[MT * 16][kChunkK + kRowPad];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slab = blockIdx.x * kMmaWarps + warp;
  const bool active = slab < slabs;
  const int kbeg = blockIdx.y * k_per_split;
  const int kend = min(K, kbeg + k_per_split);

  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][t][i] = 0.0f;

  const int col_in_tile = lane / 4;
  __half2 s2[8];
  constexpr int kUnitsPerChunk = kChunkK / kUnitK;
  static_assert(kUnitsPerChunk % (2 * kAhead) == 0 && kUnitsAlign % (2 * kAhead) == 0,
                "rounds must not straddle an A chunk or the padded end");
  // This split's units (a multiple of kUnitsAlign: the layout is padded) and where its
  // weights start; consecutive units of a slab are unit_stride 16-byte words apart.
  const int total_units = min(k_per_split, padded_k - kbeg) / kUnitK;
  const int64_t unit_stride = static_cast<int64_t>(slabs) * kW * 32;
  const uint4* next_weights = tiled + (kbeg / kUnitK) * unit_stride + static_cast<int64_t>(slab) * kW * 32 + lane;
  const unsigned units_per_group_mask = static_cast<unsigned>(group_size / kUnitK) - 1u;
  const int last_group = K / group_size - 1;

  // Weights are double-buffered in registers: one round's loads are in flight while the other
  // round computes (also across the barriers that stage A, which weights do not depend on).
  uint32_t buf0[kAhead][kW * 4], buf1[kAhead][kW * 4];
  int loaded_units = 0;
  auto load_round = [&](uint32_t (&w)[kAhead][kW * 4]) {
    if (active && loaded_units < total_units) {
#pragma unroll
      for (int a = 0; a < kAhead; ++a)
#pragma unroll
        for (int j = 0; j < kW; ++j) {
          const uint4 v = load_stream(next_weights + a * unit_stride + j * 32);
          w[a][4 * j] = v.x;
          w[a][4 * j + 1] = v.y;
          w[a][4 * j + 2] = v.z;
          w[a][4 * j + 3] = v.w;
        }
    }
    next_weights += kAhead * unit_stride;
    loaded_units += kAhead;
  };
  auto stage_a = [&](int r) {
    __syncthreads();
    // A[0 : 16 MT, kc : kc + kChunkK) as f16, zeros past M, K and the split's end. K and the
    // split bounds are multiples of 32, so each 8-wide vector is wholly in or out.
    // Rows past M stay zero from the first chunk on, so later chunks write only the M real rows
    // (at M = 1 that is 1/16 of the shared-memory stores).
    const int kc = kbeg + r * kUnitK;
    constexpr int kVecPerRow = kChunkK / 8;
    const int rows = r == 0 ? MT * 16 : min(M, MT * 16);
    for (int i = threadIdx.x; i < rows * kVecPerRow; i += kMmaThreads) {
      const int row = i / kVecPerRow, col = (i % kVecPerRow) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row < M && kc + col < kend)
        v = stage_as_f16<TA>(*reinterpret_cast<const uint4*>(A + static_cast<int64_t>(row) * K + kc + col));
      *reinterpret_cast<uint4*>(&a_s[row][col]) = v;
    }
    __syncthreads();
  };
  const __half* a_lane = &a_s[lane % 16][(lane / 16) * 8];
  auto compute_round = [&](const uint32_t (&w)[kAhead][kW * 4], int r) {
    if (!active) return;
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const unsigned unit = static_cast<unsigned>(r + a);
      // Scales change once per group (a power-of-two number of units; splits start on a
      // group boundary); padded units reuse the last group's.
      if ((unit & units_per_group_mask) == 0) {
        const int group = min((kbeg + static_cast<int>(unit) * kUnitK) / group_size, last_group);
        const __half* srow = scales + static_cast<int64_t>(group) * N + slab * kSlabN + col_in_tile;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const bool in = slab * kSlabN + t * 8 + col_in_tile < N;
          s2[t] = __float2half2_rn(in ? __half2float(srow[t * 8]) * Cd::kScaleBias : 0.0f);
        }
      }
      const __half* a_unit = a_lane + (unit & (kUnitsPerChunk - 1)) * kUnitK;
#pragma unroll
      for (int step = 0; step < 2; ++step) {
        uint32_t afrag[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(afrag[mt], a_unit + mt * 16 * (kChunkK + kRowPad) + step * 16);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const uint32_t b0 = b_register<F>(w[a], (step * 8 + t) * 2, s2[t]);
          const uint32_t b1 = b_register<F>(w[a], (step * 8 + t) * 2 + 1, s2[t]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_16816(acc[mt][t], afrag[mt], b0, b1);
        }
      }
    }
  };
  load_round(buf0);
  for (int r = 0; r < total_units; r += 2 * kAhead) {
    load_round(buf1);
    if (r % kUnitsPerChunk == 0) stage_a(r);
    compute_round(buf0, r);
    load_round(buf0);
    compute_round(buf1, r + kAhead);
  }

  // Fragment (mt, t, i) is C[16 mt + L/4 + 8 (i / 2)][64 slab + 8 t + 2 (L % 4) + i % 2].
  SplitKEpilogue<TA> epilogue{C, partials, counters, bias, bias_kind, M, N};
  constexpr float kUnscale = std::is_same_v<TA, __half> ? 1.0f : 1.0f / kBf16Prescale;
  const bool split = gridDim.y > 1;
  if (active) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int t = 0; t < 8; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = mt * 16 + lane / 4 + 8 * (i / 2);
          const int col = slab * kSlabN + t * 8 + 2 * (lane % 4) + (i % 2);
          epilogue.store(row, col, acc[mt][t][i] * kUnscale, split);
        }
  }
  if (!split) return;
  const int col_begin = blockIdx.x * kMmaWarps * kSlabN;
  epilogue.reduce_if_last(col_begin, min(N, col_begin + kMmaWarps * kSlabN), MT * 16);
}

__host__ __device__ inline int64_t padded_units(int64_t K) {
  return (K / kUnitK + kUnitsAlign - 1) / kUnitsAlign * kUnitsAlign;
}

// One thread per u32 of the tile layout: gathers its 16/bits pairs from the canonical layout.
template <QuantFormat F>
__global__ void repack_tiled_kernel(const uint32_t* __restrict__ packed, int64_t K, int64_t N,
                                    int slabs, uint32_t* __restrict__ tiled) {
  using Cd = MmaCodec<F>;
  constexpr int bits = format_bits(F), P = 32 / bits;
  constexpr uint32_t mask = (1u << bits) - 1u;
  const int64_t total = padded_units(K) * slabs * Cd::kWords * 32 * 4;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % 4);
    const int lane = static_cast<int>((idx / 4) % 32);
    const int j = static_cast<int>((idx / 128) % Cd::kWords);
    const int64_t unit_slab = idx / (128 * Cd::kWords);
    const int slab = static_cast<int>(unit_slab % slabs);
    const int64_t unit = unit_slab / slabs;
    const int u32_index = j * 4 + c;
    uint32_t out = 0;
    for (int p = 0; p < Cd::kPairsPerU32; ++p) {
      const int q = u32_index * Cd::kPairsPerU32 + p;
      const int step = q / 16, t = (q / 2) % 8, h = q % 2;
      const int64_t k = unit * kUnitK + step * 16 + 2 * (lane % 4) + 8 * h;
      const int64_t n = static_cast<int64_t>(slab) * kSlabN + t * 8 + lane / 4;
      uint32_t codes[2] = {0, 0};
      if (n < N && k < K) {  // padding (past N or K) stays code 0
        for (int e = 0; e < 2; ++e)
          codes[e] = (packed[((k + e) / P) * N + n] >> (bits * ((k + e) % P))) & mask;
      }
      if constexpr (F == QuantFormat::fp4_e2m1) {
        out |= codes[0] << (4 * (3 - p)) | codes[1] << (16 + 4 * (3 - p));
      } else if constexpr (F == QuantFormat::fp8_e4m3) {
        out |= codes[0] << (8 * (1 - p)) | codes[1] << (16 + 8 * (1 - p));
      } else {
        out |= codes[0] << (2 * p) | codes[1] << (16 + 2 * p);
      }
    }
    tiled[idx] = out;
  }
}

int slabs_for(int64_t N) { return static_cast<int>((N + kSlabN - 1) / kSlabN); }

template <QuantFormat F>
int64_t tiled_words(int64_t K, int64_t N) {
  return padded_units(K) * slabs_for(N) * MmaCodec<F>::kWords * 128;
}

// Launches unless the grid would leave most SMs idle (then the caller's dequantize + cuBLAS
// path is faster); returns whether it launched.
template <QuantFormat F, int MT, typename TA>
bool launch_mma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                cudaStream_t stream) {
  const int M = static_cast<int>(A.size(0)), N = static_cast<int>(W.N), K = static_cast<int>(W.K);
  const int device = A.device().index;
  const int slabs = slabs_for(N);
  const int blocks_x = (slabs + kMmaWarps - 1) / kMmaWarps;
  // One wave: as many K splits as resident blocks allow (a partial second wave would leave SMs
  // idle), each split covering whole rounds of units. Split partials (splits x M x N floats,
  // written and read once) are kept under half the weight bytes.
  const int units = static_cast<int>(padded_units(K));
  // Resident blocks per SM depend on the kernel and the GPU model: asked once per process.
  static const int resident = [] {
    int blocks = 0;
    MARLIN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, gemm_q_mma_kernel<F, MT, TA>, kMmaThreads, 0),
                      "gemm_q");
    return blocks;
  }();
  const int sms = multiprocessor_count(device);
  const int capacity = std::max(1, resident) * sms;
  const int by_traffic = static_cast<int>(static_cast<int64_t>(K) * format_bits(F) / (64 * static_cast<int64_t>(M)));
  const int max_splits = std::clamp(by_traffic, 1, units / kUnitsAlign);
  int splits = std::clamp(capacity / blocks_x, 1, max_splits);
  if (M > 16 && blocks_x * splits < sms && !force_tiled_gemm) return false;
  int units_per_split = (units + splits - 1) / splits;
  units_per_split = (units_per_split + kUnitsAlign - 1) / kUnitsAlign * kUnitsAlign;
  splits = (units + units_per_split - 1) / units_per_split;
  const int k_per_split = units_per_split * kUnitK;
  SplitKBuffers buffers = split_k_buffers(device, splits, M, N, blocks_x);
  gemm_q_mma_kernel<F, MT, TA><<<dim3(blocks_x, splits), kMmaThreads, 0, stream>>>(
      static_cast<const TA*>(A.data_ptr()), static_cast<const uint4*>(W.tiled.data_ptr()),
      static_cast<const __half*>(W.scales.data_ptr()), bias.defined() ? bias.data_ptr() : nullptr,
      bias_kind(bias.dtype(), bias.defined()), static_cast<TA*>(C.data_ptr()),
      buffers.partials, buffers.counters, M, N, K, units * kUnitK, W.group_size, k_per_split, slabs);
  MARLIN_CUDA_CHECK_LAUNCH("gemm_q");
  return true;
}

template <QuantFormat F>
bool dispatch_mma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C,
                  cudaStream_t stream) {
  const int64_t M = A.size(0);
  bool launched = false;
  MARLIN_DISPATCH_FLOAT16(A.dtype(), TA, "gemm_q", {
    if (M <= 16) launched = launch_mma<F, 1, TA>(A, W, bias, C, stream);
    else if (M <= 32) launched = launch_mma<F, 2, TA>(A, W, bias, C, stream);
    else launched = launch_mma<F, 4, TA>(A, W, bias, C, stream);
  });
  return launched;
}

template <QuantFormat F>
void repack(const QuantizedWeight& W, Tensor& tiled, cudaStream_t stream) {
  const int64_t total = tiled.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535 * 4));
  repack_tiled_kernel<F><<<blocks, 256, 0, stream>>>(W.packed.data<uint32_t>(), W.K, W.N,
                                                     slabs_for(W.N), tiled.data<uint32_t>());
  MARLIN_CUDA_CHECK_LAUNCH("prepare_for_gemm");
}

}  // namespace

void set_force_tiled_gemm(bool on) { force_tiled_gemm = on; }

bool mma_supported(const QuantizedWeight& W, float max_abs_scale) {
  // The scale times the format's bias must stay a finite fp16.
  const float bias = W.format == QuantFormat::fp4_e2m1 ? 16384.0f : W.format == QuantFormat::fp8_e4m3 ? 256.0f : 1.0f;
  return W.K % kUnitK == 0 && max_abs_scale * bias <= 65504.0f;
}

Tensor repack_tiled(const QuantizedWeight& W) {
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(W.device().index).handle);
  int64_t words = 0;
  switch (W.format) {
    case QuantFormat::fp4_e2m1: words = tiled_words<QuantFormat::fp4_e2m1>(W.K, W.N); break;
    case QuantFormat::fp8_e4m3: words = tiled_words<QuantFormat::fp8_e4m3>(W.K, W.N); break;
    case QuantFormat::int2: words = tiled_words<QuantFormat::int2>(W.K, W.N); break;
  }
  Tensor tiled = Tensor::empty({words}, DType::u32, W.device());
  switch (W.format) {
    case QuantFormat::fp4_e2m1: repack<QuantFormat::fp4_e2m1>(W, tiled, stream); break;
    case QuantFormat::fp8_e4m3: repack<QuantFormat::fp8_e4m3>(W, tiled, stream); break;
    case QuantFormat::int2: repack<QuantFormat::int2>(W, tiled, stream); break;
  }
  return tiled;
}

bool gemm_q_tiled(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C) {
  if (!W.tiled.defined() || A.size(0) > kMaxMmaM) return false;
  cudaStream_t stream = static_cast<cudaStream_t>(current_stream(A.device().index).handle);
  switch (W.format) {
    case QuantFormat::fp4_e2m1: return dispatch_mma<QuantFormat::fp4_e2m1>(A, W, bias, C, stream);
    case QuantFormat::fp8_e4m3: return dispatch_mma<QuantFormat::fp8_e4m3>(A, W, bias, C, stream);
    case QuantFormat::int2: return dispatch_mma<QuantFormat::int2>(A, W, bias, C, stream);
  }
  return false;
}

void append_gemm_mma_kernels(std::vector<BuiltinKernel>& out) {
  out.push_back({"gemm_mma_fp4_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp4_e2m1, 1, __half>)});
  out.push_back({"gemm_mma_fp8_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::fp8_e4m3, 1, __half>)});
  out.push_back({"gemm_mma_int2_m16", reinterpret_cast<const void*>(&gemm_q_mma_kernel<QuantFormat::int2, 1, __half>)});
  out.push_back({"repack_tiled_fp4", reinterpret_cast<const void*>(&repack_tiled_kernel<QuantFormat::fp4_e2m1>)});
}

}  // namespace marlin::cuda
