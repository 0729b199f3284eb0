// CUDA flash-decoding over the KV cache: the sequence is split into chunks, one block per (chunk,
// kv head, query token) scores the chunk's keys for every query head of its GQA group (so each
// key and value is read once per group), and a second pass merges the chunks' partial softmax
// states. The split count depends only on the cache's size (S_max), never on seq_lens, so the
// launches are the same at every step and a captured CUDA graph stays valid as the sequences
// grow; each row's keys (those its query sees) are cut into that many equal chunks on the
// device, so a short row in a long cache still spreads over every split.
#include <algorithm>

#include "core/cuda_check.h"
#include "core/env.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/gqa_decode.cuh"
#include "kernels/cuda/pdl.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using gqa::group_chunk;
using gqa::kWarps;
// set_*_splits (tests) or MARLIN_DECODE_SPLITS=n (a measurement switch) forces the split count.
int g_forced_splits = static_cast<int>(env_int("MARLIN_DECODE_SPLITS", 0));

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32, 1)
decode_split_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                    const int* __restrict__ seq_lens, const int* __restrict__ new_tokens,
                    T* __restrict__ out,
                    float* __restrict__ part_o, float2* __restrict__ part_ml, int T_len, int Hq,
                    int Hkv, int S, float scale, int window, int splits, int bt0) {
  pdl_launch_dependents();  // a GEMM after this kernel may start streaming its weights (pdl.cuh)
  pdl_wait();               // launched as a programmatic dependent: q and the cache rows are new
  constexpr int kPerLane = gqa::per_lane<D>(), kG = group_chunk<D>();
  const int group = Hq / Hkv, head_chunks = (group + kG - 1) / kG;
  const int split = blockIdx.x;
  const int kvh = blockIdx.y / head_chunks, g0 = (blockIdx.y % head_chunks) * kG;
  const int ng = min(kG, group - g0);
  const int bt = bt0 + static_cast<int>(blockIdx.z);  // launches of at most kMaxGridZ (b, t) rows
  const int b = bt / T_len, t = bt % T_len;
  const int lane = threadIdx.x % 32;

  // Lengths outside [fresh, S] (the CPU path rejects them) are clamped so no access leaves the
  // cache. Right-padding queries (t >= fresh) stop at the row's last valid key.
  const int fresh = new_tokens != nullptr ? min(max(new_tokens[b], 0), T_len) : T_len;
  const int len = min(max(seq_lens[b], fresh), S);
  const int pos = min(len - fresh + t, len - 1);
  const int first = window > 0 ? max(0, pos - window + 1) : 0;
  const int chunk = (pos - first + splits) / splits;  // ceil(keys / splits)
  const int lo = first + split * chunk, hi = min(pos, lo + chunk - 1);
  const int64_t q_row0 = (static_cast<int64_t>(b) * T_len + t) * Hq + kvh * group + g0;
  if (lo > hi) {
    // No key of this row in this chunk (past the row's length, or before its window): exit with
    // an empty partial state (M = -inf, skipped by the merge), or zeros when the one split finds
    // no key at all. The test is uniform over the block and comes before any barrier.
    for (int idx = threadIdx.x; idx < ng * D; idx += blockDim.x) {
      const int g = idx / D, d = idx % D;
      if (splits == 1) out[(q_row0 + g) * D + d] = from_float<T>(0.0f);  // a row with no key
      else if (d == 0) part_ml[(q_row0 + g) * splits + split] = make_float2(-INFINITY, 0.0f);
    }
    return;
  }

  const int64_t cache_base = (static_cast<int64_t>(b) * Hkv + kvh) * S * D;
  gqa::KeyBatch<D> batch;  // requested before q, which it does not need
  gqa::load_key_batch<T, D>(kc + cache_base, vc + cache_base, lo + threadIdx.x / 32, hi, batch);
  float qr[kG][kPerLane], acc[kG][kPerLane], m[kG], l[kG];
  gqa::clear_states(m, l, acc);
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      qr[g][i] = g < ng && d < D ? to_float(q[(q_row0 + g) * D + d]) * scale : 0.0f;
    }
  gqa::attend_keys<T, D, kG>(kc + cache_base, vc + cache_base, lo, hi, ng, qr, -1, nullptr, nullptr, batch, m, l,
                             acc);

  // Merge the warps' states in shared memory.
  __shared__ gqa::WarpStates<kG, D> st;
  gqa::stage_states(st, m, l, acc);
  __syncthreads();
  write_block_state<kWarps, kG>(st.m, st.l, &st.acc[0][0][0], D, ng, D, q_row0, splits, split, out, part_o,
                                part_ml);
}

template <typename T, int D>
void launch_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seq_lens,
                   const Tensor& new_tokens, float scale, int window, Tensor& out,
                   cudaStream_t stream) {
  constexpr int kG = group_chunk<D>();
  const int B = static_cast<int>(q.size(0)), T_len = static_cast<int>(q.size(1));
  const int Hq = static_cast<int>(q.size(2)), Hkv = static_cast<int>(kc.size(1));
  const int S = static_cast<int>(kc.size(2));
  const int head_chunks = (Hq / Hkv + kG - 1) / kG;
  const int base_blocks = Hkv * head_chunks * B * T_len;
  const int splits =
      decode_split_count(g_forced_splits, base_blocks, S, multiprocessor_count(q.device().index));
  const int64_t rows = static_cast<int64_t>(B) * T_len * Hq;
  Tensor part_o, part_ml;
  if (splits > 1) {
    part_o = Tensor::empty({rows * splits * D}, DType::f32, q.device());
    part_ml = Tensor::empty({rows * splits * 2}, DType::f32, q.device());
  }
  for (int bt0 = 0; bt0 < B * T_len; bt0 += kMaxGridZ) {
    const dim3 grid(splits, Hkv * head_chunks, std::min(kMaxGridZ, B * T_len - bt0));
    MARLIN_CUDA_CHECK(launch_pdl(decode_split_kernel<T, D>, grid, dim3(kWarps * 32), 0, stream,
                                 static_cast<const T*>(q.data_ptr()), static_cast<const T*>(kc.data_ptr()),
                                 static_cast<const T*>(vc.data_ptr()), seq_lens.data<int32_t>(),
                                 new_tokens.defined() ? new_tokens.data<int32_t>() : nullptr,
                                 static_cast<T*>(out.data_ptr()), splits > 1 ? part_o.data<float>() : nullptr,
                                 splits > 1 ? reinterpret_cast<float2*>(part_ml.data<float>()) : nullptr,
                                 T_len, Hq, Hkv, S, scale, window, splits, bt0),
                      "attention_decode");
  }
  if (splits > 1)
    MARLIN_CUDA_CHECK(launch_pdl(flash_merge_kernel<T>, flash_merge_grid(rows, D), flash_merge_block(),
                                 0, stream, part_o.data<float>(),
                                 reinterpret_cast<const float2*>(part_ml.data<float>()),
                                 static_cast<T*>(out.data_ptr()), splits, D),
                      "attention_decode (merge)");
}

template <typename T>
void dispatch_head_dim(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& lens,
                       const Tensor& fresh, float scale, int window, Tensor& out,
                       cudaStream_t stream) {
  switch (q.size(3)) {
    case 64: return launch_decode<T, 64>(q, kc, vc, lens, fresh, scale, window, out, stream);
    case 80: return launch_decode<T, 80>(q, kc, vc, lens, fresh, scale, window, out, stream);
    case 96: return launch_decode<T, 96>(q, kc, vc, lens, fresh, scale, window, out, stream);
    case 128: return launch_decode<T, 128>(q, kc, vc, lens, fresh, scale, window, out, stream);
    case 256: return launch_decode<T, 256>(q, kc, vc, lens, fresh, scale, window, out, stream);
    default: fail("attention_decode", "head_dim=", q.size(3), " has no kernel");
  }
}

}  // namespace

void set_attention_decode_splits(int splits) { g_forced_splits = splits; }
int attention_decode_forced_splits() { return g_forced_splits; }

void attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& seq_lens, const Tensor& new_tokens, float scale,
                      int64_t sliding_window, Tensor& out) {
  auto stream = static_cast<cudaStream_t>(current_stream(q.device().index).handle);
  const int window = static_cast<int>(std::min<int64_t>(sliding_window, INT32_MAX));
  const Tensor& kc = k_cache;
  const Tensor& vc = v_cache;
  switch (q.dtype()) {
    case DType::f32: return dispatch_head_dim<float>(q, kc, vc, seq_lens, new_tokens, scale, window, out, stream);
    case DType::f16: return dispatch_head_dim<__half>(q, kc, vc, seq_lens, new_tokens, scale, window, out, stream);
    default: return dispatch_head_dim<__nv_bfloat16>(q, kc, vc, seq_lens, new_tokens, scale, window, out, stream);
  }
}

}  // namespace marlin::cuda
