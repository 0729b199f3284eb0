// CUDA multi-head latent attention. The keys are split into chunks along the sequence; one
// block per (chunk, group of kHeads query heads, query token) scores the chunk's keys with an
// online softmax, and a second pass merges the chunks' partial states (flash-decoding). Where
// every head reads the same latent row, a block loads each row once for its kHeads heads (one
// in the absorbed decode: launch_attention says why). The split count depends only on S, never
// on seq_lens, so a captured CUDA graph stays valid as the sequences grow; each row's keys are
// cut into that many chunks on the device, so a short row in a long cache (a 32k-token cache at
// its first steps) still spreads over them all.
#include <algorithm>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_decode.cuh"
#include "kernels/cuda/kernel_trace.cuh"
#include "kernels/cuda/mla_kernels_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/rope_items.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using kernels::MlaAttentionArgs;
using kernels::MlaOperand;

constexpr int kRopeLane = 2;   // Dr <= 64
// set_*_splits (tests) or MARLIN_MLA_SPLITS=n (a measurement switch) forces the split count.
int g_forced_splits = static_cast<int>(env_int("MARLIN_MLA_SPLITS", 0));

template <typename T>
__device__ __forceinline__ const T* row_ptr(const MlaOperand& o, int b, int r, int h) {
  return static_cast<const T*>(o.data) + b * o.batch_stride + static_cast<int64_t>(r) * o.row_stride +
         h * o.head_stride;
}

// dst[i] = p[lane + 32 i] for the dims below D, 0 past them.
template <typename T, int L>
__device__ __forceinline__ void load_lanes(const T* p, int D, int lane, float (&dst)[L], float mul = 1.0f) {
#pragma unroll
  for (int i = 0; i < L; ++i) {
    const int d = lane + 32 * i;
    dst[i] = d < D ? to_float(p[d]) * mul : 0.0f;
  }
}

// NL / VL: k_nope and v dims per lane (Dn <= 32 NL, Dv <= 32 VL). kShared: k_nope, k_rope and
// v have one head for all (the latent cache), loaded once per key for the block's heads; a warp
// then requests kKeyBatch keys before scoring the first, so its keys cost about one memory
// latency per batch instead of one each (GLM-4.7-Flash: ~7 keys a warp per step, 24 us a layer
// when they were read one by one). kVIsK: v is k_nope itself (the absorbed form's latent), read
// once.
constexpr int kKeyBatch = 4;

// The attention's per-split states (mla_split_kernel with splits > 1) as the product's x: row
// (m, h) of x is attention row m H + h, merged as the block reads it (the absorbed decode's W_UV
// product: the merge launch and its hand-over saved). Null part_o: x is read as it is.
struct SplitStates {
  const float* part_o = nullptr;   // [M H][splits][K]
  const float2* part_ml = nullptr;  // [M H][splits]
  int splits = 0;
};

// The W_UV product that reads the attention's output (mla_attention_head_matmul): x is that
// output viewed [B T, H, Dv].
struct ProductAfter {
  const Tensor& x;
  const Tensor& w;
  Tensor& out;
};

// out = x @ w by head on the vector kernel (defined below the kernels), with `rope`'s work in an
// extra row of blocks, or x merged from split states.
void launch_head_matmul_vector(const Tensor& x, const Tensor& w, Tensor& out, const rope_work::RopeJob& rope,
                               const SplitStates& states);

template <typename T, int NL, int VL, bool kShared, bool kVIsK, int kHeads, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 1)
mla_split_kernel(MlaAttentionArgs a, float* __restrict__ part_o, float2* __restrict__ part_ml,
                 int splits, int bt0) {
  static_assert(!kVIsK || (kShared && NL == VL), "v read as k_nope needs one latent row of both");
  // Rows of separate k_nope and v (16 + 16 lanes' worth) hold half as many keys in registers.
  constexpr int kBatch = kVIsK ? kKeyBatch : kKeyBatch / 2;
  TRACE_START
  pdl_launch_dependents();
  pdl_wait();  // launched as a programmatic dependent: q and the latent rows are new
  TRACE_WAITED
  const int split = blockIdx.x, h0 = blockIdx.y * kHeads;
  const int ng = min(kHeads, a.H - h0);
  const int bt = bt0 + static_cast<int>(blockIdx.z);  // launches of at most kMaxGridZ (b, t) rows
  const int b = bt / a.T, t = bt % a.T;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Lengths outside [T, S] ([1, S] and new_tokens outside [0, min(T, len)] with right padding;
  // the CPU path rejects them) are clamped so no access leaves the keys. As on the CPU, a
  // padding query (t >= new_tokens[b]) takes the row's last valid position.
  const int len = a.new_tokens != nullptr ? min(max(a.seq_lens[b], 1), a.S)
                                          : min(max(a.seq_lens[b], a.T), a.S);
  const int real = a.new_tokens != nullptr ? min(max(a.new_tokens[b], 0), min(a.T, len)) : a.T;
  const int pos = min(len - real + t, len - 1);
  const int chunk = (pos + splits) / splits;  // ceil((pos + 1) / splits)
  const int lo = split * chunk, hi = min(pos, lo + chunk - 1);

  float qn[kHeads][NL], qr[kHeads][kRopeLane], acc[kHeads][VL], m[kHeads], l[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const int h = min(h0 + g, a.H - 1);
    load_lanes<T, NL>(row_ptr<T>(a.q_nope, b, t, h), a.Dn, lane, qn[g], a.scale);
    load_lanes<T, kRopeLane>(row_ptr<T>(a.q_rope, b, t, h), a.Dr, lane, qr[g], a.scale);
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < VL; ++i) acc[g][i] = 0.0f;
  }

  TRACE_MARK(1)
  // Head g's score of a key (this lane's part; the warp sum is taken by the caller).
  auto partial_score = [&](int g, const float (&kn)[NL], const float (&kr)[kRopeLane]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NL; ++i) s += qn[g][i] * kn[i];
#pragma unroll
    for (int i = 0; i < kRopeLane; ++i) s += qr[g][i] * kr[i];
    return s;
  };
  // Key j's score and value into head g's state.
  auto score = [&](int g, const float (&kn)[NL], const float (&kr)[kRopeLane], const float (&vv)[VL]) {
    float s = partial_score(g, kn, kr);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    online_softmax_update(s, m[g], l[g], acc[g], vv);
  };
  if constexpr (kShared) {
    for (int j0 = lo + warp; j0 <= hi; j0 += kWarps * kBatch) {
      float kn[kBatch][NL], kr[kBatch][kRopeLane], vv[kVIsK ? 1 : kBatch][VL];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int j = min(j0 + u * kWarps, hi);  // past hi: a valid row loaded, never scored
        load_lanes<T, NL>(row_ptr<T>(a.k_nope, b, j, 0), a.Dn, lane, kn[u]);
        load_lanes<T, kRopeLane>(row_ptr<T>(a.k_rope, b, j, 0), a.Dr, lane, kr[u]);
        if constexpr (!kVIsK) load_lanes<T, VL>(row_ptr<T>(a.v, b, j, 0), a.Dv, lane, vv[u]);
      }
      // Every head's partial scores of the batch, then one update a head (update_heads_batch).
      float s[kHeads][kBatch];
#pragma unroll
      for (int g = 0; g < kHeads; ++g)
#pragma unroll
        for (int u = 0; u < kBatch; ++u) s[g][u] = g < ng ? partial_score(g, kn[u], kr[u]) : 0.0f;
      if constexpr (kVIsK) update_heads_batch(s, ng, (hi - j0) / kWarps + 1, m, l, acc, kn);
      else update_heads_batch(s, ng, (hi - j0) / kWarps + 1, m, l, acc, vv);
    }
  } else {
    for (int j = lo + warp; j <= hi; j += kWarps) {
      float kn[NL], kr[kRopeLane], vv[VL];
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        if (g >= ng) continue;  // not break: a fully unrolled loop keeps its arrays in registers
        load_lanes<T, NL>(row_ptr<T>(a.k_nope, b, j, h0 + g), a.Dn, lane, kn);
        load_lanes<T, kRopeLane>(row_ptr<T>(a.k_rope, b, j, h0 + g), a.Dr, lane, kr);
        load_lanes<T, VL>(row_ptr<T>(a.v, b, j, h0 + g), a.Dv, lane, vv);
        score(g, kn, kr, vv);
      }
    }
  }

  TRACE_MARK(2)
  // Merge the warps' states in shared memory.
  __shared__ float s_acc[kWarps][kHeads][VL * 32];
  __shared__ float s_m[kWarps][kHeads], s_l[kWarps][kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < VL; ++i) s_acc[warp][g][lane + 32 * i] = acc[g][i];
  }
  __syncthreads();
  const int64_t row0 = (static_cast<int64_t>(b) * a.T + t) * a.H + h0;
  write_block_state<kWarps, kHeads>(s_m, s_l, &s_acc[0][0][0], VL * 32, ng, a.Dv, row0, splits, split,
                                    static_cast<T*>(a.out), part_o, part_ml);
  TRACE_END(mla)
}

// With `after`, the W_UV product follows in place of the merge launch.
template <typename T, int NL, int VL, bool kShared, bool kVIsK, int kHeads, int kWarps>
void launch_split(const MlaAttentionArgs& a, int device, cudaStream_t stream, const ProductAfter* after) {
  auto kernel = mla_split_kernel<T, NL, VL, kShared, kVIsK, kHeads, kWarps>;
  const int head_chunks = (a.H + kHeads - 1) / kHeads;
  const int base_blocks = head_chunks * a.B * a.T;
  // Three blocks an SM for the absorbed form's one-head blocks (GLM-4.7-Flash: 20 splits, 400
  // blocks): H200, forced splits 20 decoded at 269.92 tok/s against 264.31 / 261.31 at the two
  // waves' 14, and 257.65 / 256.23 / 248.88 at 28 / 10 / 7.
  const int waves = kVIsK && kHeads == 1 ? 3 : 2;
  const int splits = decode_split_count(g_forced_splits, base_blocks, a.S, multiprocessor_count(device), waves);
  const int64_t rows = static_cast<int64_t>(a.B) * a.T * a.H;
  Tensor part_o, part_ml;
  if (splits > 1) {
    part_o = Tensor::empty({rows * splits * a.Dv}, DType::f32, Device::cuda(device));
    part_ml = Tensor::empty({rows * splits * 2}, DType::f32, Device::cuda(device));
  }
  for (int bt0 = 0; bt0 < a.B * a.T; bt0 += kMaxGridZ) {
    const dim3 grid(splits, head_chunks, std::min(kMaxGridZ, a.B * a.T - bt0));
    MARLIN_CUDA_CHECK(launch_pdl(kernel, grid, dim3(kWarps * 32), 0, stream, a,
                                 splits > 1 ? part_o.data<float>() : nullptr,
                                 splits > 1 ? reinterpret_cast<float2*>(part_ml.data<float>()) : nullptr, splits, bt0),
                      "mla_attention");
  }
  if (after != nullptr) {
    SplitStates states;
    if (splits > 1)
      states = {part_o.data<float>(), reinterpret_cast<const float2*>(part_ml.data<float>()), splits};
    return launch_head_matmul_vector(after->x, after->w, after->out, rope_work::RopeJob{}, states);
  }
  if (splits > 1)
    MARLIN_CUDA_CHECK(launch_pdl(flash_merge_kernel<T>, flash_merge_grid(rows, a.Dv), flash_merge_block(), 0,
                                 stream, part_o.data<float>(), reinterpret_cast<const float2*>(part_ml.data<float>()),
                                 static_cast<T*>(a.out), splits, a.Dv),
                      "mla_attention (merge)");
}

// The absorbed form passes the cached latent as both k_nope and v (one row for every head).
bool v_is_k(const MlaAttentionArgs& a) {
  return a.k_nope.head_stride == 0 && a.k_rope.head_stride == 0 && a.v.head_stride == 0 &&
         a.v.data == a.k_nope.data && a.Dv == a.Dn && a.v.batch_stride == a.k_nope.batch_stride &&
         a.v.row_stride == a.k_nope.row_stride;
}

// `after` is set only for the absorbed form (mla_attention_head_matmul checks).
template <typename T, int NL, int VL, bool kShared>
void launch_attention(const MlaAttentionArgs& a, int device, cudaStream_t stream, const ProductAfter* after) {
  // The absorbed decode takes one head a block: a warp's chain of dependent steps (the scores,
  // the softmax updates, the block's merge) is a quarter as long, with 20 head blocks a split
  // instead of 5, and the latent rows come from L2 after the first head's read. H200,
  // GLM-4.7-Flash batch 1 (heads, warps a block): (1, 4) 269.77 / 269.61 tok/s, (2, 4) 266.93 /
  // 266.95, (4, 4) 263.66 / 264.22, (1, 8) 262.54 / 262.29, (2, 8) 252.80 / 252.80.
  if constexpr (kShared && NL == VL)
    if (v_is_k(a)) return launch_split<T, NL, VL, kShared, true, 1, 4>(a, device, stream, after);
  launch_split<T, NL, VL, kShared, false, 4, 4>(a, device, stream, after);
}

template <typename T, bool kShared>
void dispatch_dims(const MlaAttentionArgs& a, int device, cudaStream_t stream, const ProductAfter* after = nullptr) {
  // The smallest (k_nope, v) lanes that hold both dims: the shapes of GLM-4.7-Flash (expanded
  // 192/256, latent 512), DeepSeek (128/128, latent 512) and small test models.
  const int dims = std::max(a.Dn, a.Dv);
  if (dims <= 64) return launch_attention<T, 2, 2, kShared>(a, device, stream, after);
  if (dims <= 128) return launch_attention<T, 4, 4, kShared>(a, device, stream, after);
  if (a.Dn <= 192 && a.Dv <= 256) return launch_attention<T, 6, 8, kShared>(a, device, stream, after);
  if (dims <= 256) return launch_attention<T, 8, 8, kShared>(a, device, stream, after);
  return launch_attention<T, 16, 16, kShared>(a, device, stream, after);
}

template <typename T, int MB>
__global__ void head_matmul_kernel(const T* __restrict__ x, int64_t x_m_stride, int64_t x_h_stride,
                                   const T* __restrict__ w, T* __restrict__ out, int M, int H,
                                   int K, int N) {
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  extern __shared__ float xs[];  // [MB][K]
  const int h = blockIdx.y, m0 = blockIdx.z * MB;
  const int mb = min(MB, M - m0);
  for (int i = threadIdx.x; i < MB * K; i += blockDim.x) {
    const int r = i / K, k = i % K;
    xs[i] = r < mb ? to_float(x[(m0 + r) * x_m_stride + h * x_h_stride + k]) : 0.0f;
  }
  __syncthreads();
  const int n = (blockIdx.x * blockDim.x + threadIdx.x) * 2;
  if (n >= N) return;
  const bool pair = n + 1 < N;
  float acc[MB][2] = {};
  const T* wh = w + static_cast<int64_t>(h) * K * N + n;
  for (int k = 0; k < K; ++k) {
    const float w0 = to_float(wh[static_cast<int64_t>(k) * N]);
    const float w1 = pair ? to_float(wh[static_cast<int64_t>(k) * N + 1]) : 0.0f;
#pragma unroll
    for (int r = 0; r < MB; ++r) {
      acc[r][0] += xs[r * K + k] * w0;
      acc[r][1] += xs[r * K + k] * w1;
    }
  }
  for (int r = 0; r < mb; ++r) {
    T* o = out + (static_cast<int64_t>(m0 + r) * H + h) * N + n;
    o[0] = from_float<T>(acc[r][0]);
    if (pair) o[1] = from_float<T>(acc[r][1]);
  }
}

// Decode rows (M <= kVecRowsMax): a block takes 64 columns of one head; each thread owns 8
// adjacent columns (one 16-byte load of a weight row) at one of 32 k offsets, and the 32 partial
// sums meet in shared memory. 64-column blocks put GLM's absorbed W_UK / W_UV (20 heads x 512 or
// 256 columns) on 80-160 SMs; the kernel above (2 columns a thread, K loads in a chain) took
// 80 us a matrix on those shapes. A thread's rows of the first kVecChunk k (all of them for
// GLM and DeepSeek) are requested at once, before waiting for the kernel that wrote x (launched
// as a programmatic dependent: pdl.cuh), so the weights stream while that kernel drains.
constexpr int kVecThreads = 256, kVecCols = 64, kVecKOffsets = kVecThreads / (kVecCols / 8);
constexpr int kVecRows = 4, kVecRowsMax = 16;
constexpr int kVecLoads = 16, kVecChunk = kVecLoads * kVecKOffsets;  // 512 rows of k

// Block rows r < mb of x from the split states into xs [kRows][K] (K even): each value is
// what flash_merge_kernel writes (merge_term, merge_finish, rounded to T), so the product is the
// merge launch's then this kernel's, bit for bit. A thread takes two adjacent values and each
// split's pair in one 8-byte load, kMergeBatch splits' loads in flight (GLM-4.7-Flash, K = 512:
// a thread's whole share is one pair of 20 splits, two batches; 20 at once spilled registers).
constexpr int kMergeBatch = 16;
template <typename T, int kRows>
__device__ __forceinline__ void merge_rows_into(const SplitStates& st, int64_t row0, int64_t row_step, int mb, int K,
                                                float* xs, float* scratch) {
  // The rows' split factors and totals in `scratch` (free shared memory; dynamic, so the
  // product's own launches need no more than before).
  auto s_c = reinterpret_cast<float(*)[kMaxDecodeSplits]>(scratch);
  float* s_total = scratch + kVecRows * kMaxDecodeSplits;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, splits = st.splits;
  const int pairs = K / 2, items = kRows * pairs;
  float2 part[kMergeBatch];
  auto load_batch = [&](int i, int sp0) {
    const int r = i / pairs, k = 2 * (i % pairs);
    const float* o = st.part_o + (row0 + r * row_step) * splits * K + k;
#pragma unroll
    for (int j = 0; j < kMergeBatch; ++j)
      part[j] = r < mb && sp0 + j < splits ? *reinterpret_cast<const float2*>(o + static_cast<int64_t>(sp0 + j) * K)
                                           : make_float2(0.0f, 0.0f);
  };
  // The first batch is requested before the split factors, so the two loads overlap.
  if (threadIdx.x < items) load_batch(threadIdx.x, 0);
  if (warp < mb) {
    const float L = split_factors(st.part_ml + (row0 + warp * row_step) * splits, splits, s_c[warp]);
    if (lane == 0) s_total[warp] = L;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < items; i += blockDim.x) {
    const int r = i / pairs, k = 2 * (i % pairs);
    float sx[kMergeSums] = {}, sy[kMergeSums] = {};
    for (int sp0 = 0; r < mb && sp0 < splits; sp0 += kMergeBatch) {
      if (sp0 > 0 || i != static_cast<int>(threadIdx.x)) load_batch(i, sp0);
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) {
        if (sp0 + j >= splits) continue;
        const float c = s_c[r][sp0 + j];
        sx[j % kMergeSums] = merge_term(sx[j % kMergeSums], part[j].x, c);
        sy[j % kMergeSums] = merge_term(sy[j % kMergeSums], part[j].y, c);
      }
    }
    xs[r * K + k] = r < mb ? to_float(from_float<T>(merge_finish(sx, s_total[r]))) : 0.0f;
    xs[r * K + k + 1] = r < mb ? to_float(from_float<T>(merge_finish(sy, s_total[r]))) : 0.0f;
  }
}

// With a RoPE job (absorbed decode: W_UK's product), the blocks of y == H run the step's RoPE and
// latent cache write (mla_rope_cache_write's work, which reads q's rope dims and the compressed
// kv, never q_nope) instead of a product: one launch of the decode chain fewer. With split
// states, x is the attention's merge (merge_rows_into).
// Two blocks an SM (at most 128 registers): GLM-4.7-Flash's W_UK launch is 168 blocks, and at 168
// registers (one block an SM) its last 36 ran as a second wave, ~3 us a layer (H200, traced).
// kRows: the rows of x a block takes (1 for one decode token, where four would multiply three
// rows of zeros).
template <typename T, int kRows>
__global__ void __launch_bounds__(kVecThreads, 2)
head_matmul_vector_kernel(const T* __restrict__ x, int64_t x_m_stride, int64_t x_h_stride,
                          const T* __restrict__ w, T* __restrict__ out, int M, int H, int K, int N,
                          rope_work::RopeJob rope, SplitStates states) {
  TRACE_START
  pdl_launch_dependents();
  extern __shared__ float smem_f[];
  if (static_cast<int>(blockIdx.y) == H) {
    pdl_wait();  // q and the compressed kv are the previous kernels' output
    TRACE_WAITED
    constexpr int kWarpsPerBlock = kVecThreads / 32;
    const int warp = threadIdx.x / 32;
    const int64_t blocks = static_cast<int64_t>(gridDim.x) * gridDim.z;
    const int64_t block = static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x;
    rope_work::run_rope_job<T>(rope, block * kWarpsPerBlock + warp, blocks * kWarpsPerBlock,
                               smem_f + static_cast<int64_t>(warp) * 2 * rope.half);
    TRACE_END(head_matmul)
    return;
  }
  float* xs = smem_f;                    // [kRows][K]
  float* partial = smem_f + kRows * K;    // [kVecKOffsets][kRows][kVecCols]
  static_assert(kVecKOffsets * kVecCols >= kVecRows * (kMaxDecodeSplits + 1), "merge_rows_into's scratch fits in partial");
  const int h = blockIdx.y, m0 = blockIdx.z * kRows, mb = min(kRows, M - m0);
  const int col8 = threadIdx.x % (kVecCols / 8), k0 = threadIdx.x / (kVecCols / 8);
  const int n0 = blockIdx.x * kVecCols + col8 * 8;
  const T* wh = w + static_cast<int64_t>(h) * K * N + n0;
  uint4 v[kVecLoads];
  auto load_chunk = [&](int kb) {
#pragma unroll
    for (int u = 0; u < kVecLoads; ++u) {
      const int kk = kb + k0 + u * kVecKOffsets;
      v[u] = n0 < N && kk < K ? __ldg(reinterpret_cast<const uint4*>(wh + static_cast<int64_t>(kk) * N))
                              : make_uint4(0, 0, 0, 0);
    }
  };
  load_chunk(0);
  pdl_wait();  // x is the previous kernel's output
  TRACE_WAITED
  if (states.part_o != nullptr) {
    merge_rows_into<T, kRows>(states, static_cast<int64_t>(m0) * H + h, H, mb, K, xs, partial);
  } else {
    for (int i = threadIdx.x; i < kRows * K; i += blockDim.x) {
      const int r = i / K, k = i % K;
      xs[i] = r < mb ? to_float(x[(m0 + r) * x_m_stride + h * x_h_stride + k]) : 0.0f;
    }
  }
  __syncthreads();
  float acc[kRows][8] = {};
  for (int kb = 0; kb < K; kb += kVecChunk) {
    if (kb > 0) load_chunk(kb);
#pragma unroll
    for (int u = 0; u < kVecLoads; ++u) {
      const int kk = kb + k0 + u * kVecKOffsets;
      if (kk >= K) break;  // rows past K (W_UK's K = 192 fills 6 of a thread's 16)
      // The 8 weights from the registers (a pointer into v would put it in local memory).
      const uint32_t words[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
      float e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = bits16_to_float<T>((words[j / 2] >> (16 * (j % 2))) & 0xffffu);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float xv = xs[r * K + kk];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(xv, e[j], acc[r][j]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int j = 0; j < 8; ++j) partial[(k0 * kRows + r) * kVecCols + col8 * 8 + j] = acc[r][j];
  __syncthreads();
  // One (row, column) per thread: kRows x kVecCols of the block's 256 threads.
  TRACE_END(head_matmul)
  const int r = threadIdx.x / kVecCols, c = threadIdx.x % kVecCols, n = blockIdx.x * kVecCols + c;
  if (r >= mb || n >= N) return;
  float sum = 0.0f;
#pragma unroll 8
  for (int ko = 0; ko < kVecKOffsets; ++ko) sum += partial[(ko * kRows + r) * kVecCols + c];
  out[(static_cast<int64_t>(m0 + r) * H + h) * N + n] = from_float<T>(sum);
}

}  // namespace

void set_mla_attention_splits(int splits) { g_forced_splits = splits; }

void mla_attention(const MlaAttentionArgs& args, DType dtype, int device) {
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  const bool shared = args.k_nope.head_stride == 0 && args.k_rope.head_stride == 0 &&
                      args.v.head_stride == 0;
  MARLIN_DISPATCH_FLOAT16(dtype, T, "mla_attention", {
    if (shared) dispatch_dims<T, true>(args, device, stream);
    else dispatch_dims<T, false>(args, device, stream);
  });
}

namespace {

size_t vector_smem_bytes(int K) { return sizeof(float) * (kVecRows * K + kVecKOffsets * kVecRows * kVecCols); }

bool vector_kernel_fits(const Tensor& x, const Tensor& w) {
  return x.size(0) <= kVecRowsMax && w.size(2) % 8 == 0 && reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0 &&
         vector_smem_bytes(static_cast<int>(x.size(2))) <= 48 * 1024;
}

void launch_head_matmul_vector(const Tensor& x, const Tensor& w, Tensor& out, const rope_work::RopeJob& rope,
                               const SplitStates& states) {
  const int M = static_cast<int>(x.size(0)), H = static_cast<int>(x.size(1));
  const int K = static_cast<int>(x.size(2)), N = static_cast<int>(w.size(2));
  const int device = x.device().index;
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  const int rows = M == 1 ? 1 : kVecRows;
  const dim3 vgrid((N + kVecCols - 1) / kVecCols, H + (rope.items > 0 ? 1 : 0), (M + rows - 1) / rows);
  MARLIN_DISPATCH_FLOAT16(x.dtype(), T, "mla_head_matmul", {
    auto* kernel = rows == 1 ? head_matmul_vector_kernel<T, 1> : head_matmul_vector_kernel<T, kVecRows>;
    MARLIN_CUDA_CHECK(launch_maybe_pdl(pdl_enabled(device), kernel, vgrid, dim3(kVecThreads),
                                       vector_smem_bytes(K), stream, static_cast<const T*>(x.data_ptr()),
                                       x.strides()[0], x.strides()[1], static_cast<const T*>(w.data_ptr()),
                                       static_cast<T*>(out.data_ptr()), M, H, K, N, rope, states),
                      "mla_head_matmul");
  });
}

}  // namespace

bool mla_attention_head_matmul(const MlaAttentionArgs& args, DType dtype, int device, const Tensor& x,
                               const Tensor& w, Tensor& out) {
  // MARLIN_MLA_MERGE_IN_PRODUCT=0: the merge launch, then the product (to measure against).
  static const bool merge_in_product = !env_is("MARLIN_MLA_MERGE_IN_PRODUCT", "0");
  if (!merge_in_product || !v_is_k(args) || args.Dv % 2 != 0 || !vector_kernel_fits(x, w)) return false;
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  const ProductAfter after{x, w, out};
  MARLIN_DISPATCH_FLOAT16(dtype, T, "mla_attention_head_matmul",
                          { dispatch_dims<T, true>(args, device, stream, &after); });
  return true;
}

bool mla_head_matmul_rope_cache_write(const Tensor& x, const Tensor& w, Tensor& out, const Tensor& q_rope,
                                      const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                                      const Tensor& inv_freq, bool interleaved, float attention_factor,
                                      const Tensor& norm_weight, float eps, Tensor& cache, const Tensor& starts,
                                      const Tensor& counts) {
  // The rope blocks stage interleaved pairs in the product's shared memory (8 warps' worth).
  const size_t stage_bytes = sizeof(float) * 2 * static_cast<size_t>(inv_freq.numel()) * (kVecThreads / 32);
  if (!vector_kernel_fits(x, w) || stage_bytes > vector_smem_bytes(static_cast<int>(x.size(2)))) return false;
  launch_head_matmul_vector(x, w, out,
                            rope_work::make_mla_rope_job(q_rope, k_rope, latent, positions, inv_freq, interleaved,
                                                         attention_factor, norm_weight, eps, cache, starts, counts),
                            SplitStates{});
  return true;
}

void mla_head_matmul(const Tensor& x, const Tensor& w, Tensor& out) {
  constexpr int kRows = 4, kThreads = 64;
  const int M = static_cast<int>(x.size(0)), H = static_cast<int>(x.size(1));
  const int K = static_cast<int>(x.size(2)), N = static_cast<int>(w.size(2));
  auto stream = static_cast<cudaStream_t>(current_stream(x.device().index).handle);
  if (vector_kernel_fits(x, w)) return launch_head_matmul_vector(x, w, out, rope_work::RopeJob{}, SplitStates{});
  const dim3 grid((N + 2 * kThreads - 1) / (2 * kThreads), H, (M + kRows - 1) / kRows);
  const size_t smem = sizeof(float) * kRows * K;
  MARLIN_CHECK(smem <= 48 * 1024, "mla_head_matmul", "K=", K, " is too large (at most ",
               48 * 1024 / (sizeof(float) * kRows), ")");
  MARLIN_DISPATCH_FLOAT16(x.dtype(), T, "mla_head_matmul", {
    head_matmul_kernel<T, kRows><<<grid, kThreads, smem, stream>>>(
        static_cast<const T*>(x.data_ptr()), x.strides()[0], x.strides()[1],
        static_cast<const T*>(w.data_ptr()), static_cast<T*>(out.data_ptr()), M, H, K, N);
  });
  MARLIN_CUDA_CHECK_LAUNCH("mla_head_matmul");
}

}  // namespace marlin::cuda
