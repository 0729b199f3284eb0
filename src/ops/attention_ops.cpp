// ops::attention_*: the shape, dtype and device checks shared by the backends, then dispatch.
#include <cmath>

#include "kernels/cpu/attention_kernels.h"
#include "marlin/attention.h"
#include "marlin/mla_ops.h"
#include "marlin/ops_nn.h"
#include "ops/nn_internal.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/attention_kernels_cuda.h"
#include "kernels/cuda/mla_kernels_cuda.h"
#include "kernels/cuda/nn_kernels_cuda.h"
#endif

namespace marlin::ops {
namespace {

void check_float(const char* op, const char* name, const Tensor& t, int64_t dims) {
  MARLIN_CHECK(t.defined() && t.dim() == dims, op, name, " must be ", dims, "-D, got ",
               t.defined() ? t.describe() : "an undefined tensor");
  MARLIN_CHECK(t.dtype() == DType::f16 || t.dtype() == DType::bf16 || t.dtype() == DType::f32,
               op, name, " must be f16, bf16 or f32, got ", t.describe());
  MARLIN_CHECK(t.is_contiguous(), op, name, " must be contiguous, got ", t.describe());
}

void check_same(const char* op, const Tensor& q, const Tensor& other, const char* name) {
  MARLIN_CHECK(other.dtype() == q.dtype(), op, name, " must have q's dtype, got q ",
               q.describe(), " and ", name, " ", other.describe());
  MARLIN_CHECK(other.device() == q.device(), op, name, " on ", other.device().str(),
               " but q on ", q.device().str());
}

void check_heads(const char* op, int64_t Hq, int64_t Hkv, int64_t D, float scale,
                 int64_t sliding_window) {
  MARLIN_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, "query heads Hq=", Hq,
               " must be a multiple of key/value heads Hkv=", Hkv);
  MARLIN_CHECK(D == 64 || D == 80 || D == 96 || D == 128 || D == 256, op, "head_dim=", D,
               " is not supported (64, 80, 96, 128 or 256)");
  MARLIN_CHECK(std::isfinite(scale), op, "scale must be finite, got ", scale);
  MARLIN_CHECK(sliding_window >= 0, op, "sliding_window must be >= 0, got ", sliding_window);
}

// An i32 [B] lengths tensor on `device`.
void check_lengths(const char* op, const char* name, const Tensor& t, int64_t B, Device device) {
  MARLIN_CHECK(t.defined() && t.dim() == 1 && t.size(0) == B && t.dtype() == DType::i32 &&
                   t.is_contiguous(),
               op, name, " must be i32 [B] = [", B, "], got ",
               t.defined() ? t.describe() : "an undefined tensor");
  MARLIN_CHECK(t.device() == device, op, name, " on ", t.device().str(), " but expected on ",
               device.str());
}

void check_cache_write(const char* op, const Tensor& cache, const Tensor& new_values) {
  check_float(op, "cache [B, H, S_max, D]", cache, 4);
  MARLIN_CHECK(new_values.defined() && new_values.dim() == 4, op,
               "new values must be [B, H, T, D], got ",
               new_values.defined() ? new_values.describe() : "an undefined tensor");
  check_same(op, cache, new_values, "new values");
  MARLIN_CHECK(new_values.size(0) == cache.size(0) && new_values.size(1) == cache.size(1) &&
                   new_values.size(3) == cache.size(3),
               op, "new values ", new_values.describe(), " do not match cache ", cache.describe(),
               " in B, H or D");
}

}  // namespace

Tensor attention_prefill(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         int64_t sliding_window) {
  constexpr const char* op = "attention_prefill";
  check_float(op, "q [T, Hq, D]", q, 3);
  check_float(op, "k [T, Hkv, D]", k, 3);
  check_float(op, "v [T, Hkv, D]", v, 3);
  check_same(op, q, k, "k");
  check_same(op, q, v, "v");
  MARLIN_CHECK(k.shape() == v.shape(), op, "k and v must have one shape, got ", k.describe(),
               " and ", v.describe());
  MARLIN_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(2), op,
               "k must be [T, Hkv, D] with q's T and D, got q ", q.describe(), " and k ",
               k.describe());
  check_heads(op, q.size(1), k.size(1), q.size(2), scale, sliding_window);
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (q.numel() == 0) return out;
  if (q.device().is_cpu()) {
    cpu::attention_prefill(q, k, v, scale, sliding_window, out);
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::attention_prefill(q, k, v, scale, sliding_window, out);
  return out;
#else
  fail(op, "tensors are on ", q.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor attention_extend(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& seq_lens, float scale, int64_t sliding_window,
                        const Tensor& new_tokens) {
  constexpr const char* op = "attention_extend";
  check_float(op, "q [B, T, Hq, D]", q, 4);
  check_float(op, "k_cache [B, Hkv, S_max, D]", k_cache, 4);
  check_float(op, "v_cache [B, Hkv, S_max, D]", v_cache, 4);
  check_same(op, q, k_cache, "k_cache");
  check_same(op, q, v_cache, "v_cache");
  MARLIN_CHECK(k_cache.shape() == v_cache.shape(), op, "k_cache and v_cache must have one shape, got ",
               k_cache.describe(), " and ", v_cache.describe());
  MARLIN_CHECK(k_cache.size(0) == q.size(0) && k_cache.size(3) == q.size(3), op,
               "the caches must be [B, Hkv, S_max, D] with q's B and D, got q ", q.describe(),
               " and k_cache ", k_cache.describe());
  MARLIN_CHECK(q.size(1) <= k_cache.size(2), op, "T=", q.size(1),
               " new tokens do not fit a cache of S_max=", k_cache.size(2));
  check_heads(op, q.size(2), k_cache.size(1), q.size(3), scale, sliding_window);
  check_lengths(op, "seq_lens", seq_lens, q.size(0), q.device());
  if (new_tokens.defined()) check_lengths(op, "new_tokens", new_tokens, q.size(0), q.device());
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (q.numel() == 0) return out;
  if (q.device().is_cpu()) {
    // The lengths are only readable here; the CUDA kernel clamps instead of failing.
    const int32_t* lens = seq_lens.data<int32_t>();
    const int32_t* fresh = new_tokens.defined() ? new_tokens.data<int32_t>() : nullptr;
    for (int64_t b = 0; b < q.size(0); ++b) {
      const int64_t n = fresh ? fresh[b] : q.size(1);
      MARLIN_CHECK(n >= 0 && n <= q.size(1), op, "new_tokens[", b, "]=", n,
                   " must be in [0, T=", q.size(1), "]");
      MARLIN_CHECK(lens[b] >= n && lens[b] <= k_cache.size(2), op, "seq_lens[", b, "]=",
                   lens[b], " must be in [", fresh ? "new_tokens[b]" : "T", ", S_max] = [", n,
                   ", ", k_cache.size(2), "]");
    }
    cpu::attention_extend(q, k_cache, v_cache, seq_lens, new_tokens, scale, sliding_window, out);
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::attention_extend(q, k_cache, v_cache, seq_lens, new_tokens, scale, sliding_window, out);
  return out;
#else
  fail(op, "tensors are on ", q.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& seq_lens, float scale, int64_t sliding_window) {
  MARLIN_CHECK(q.defined() && q.dim() == 3, "attention_decode", "q must be [B, Hq, D], got ",
               q.defined() ? q.describe() : "an undefined tensor");
  MARLIN_CHECK(q.is_contiguous(), "attention_decode", "q must be contiguous, got ", q.describe());
  const Tensor q4 = q.view({q.size(0), 1, q.size(1), q.size(2)});
  return attention_extend(q4, k_cache, v_cache, seq_lens, scale, sliding_window)
      .view(q.shape());
}

void attention_cache_write(Tensor& cache, const Tensor& new_values, int64_t start) {
  constexpr const char* op = "attention_cache_write";
  check_cache_write(op, cache, new_values);
  MARLIN_CHECK(start >= 0 && start + new_values.size(2) <= cache.size(2), op, "positions [",
               start, ", ", start + new_values.size(2), ") exceed the cache's S_max=",
               cache.size(2));
  if (new_values.numel() == 0) return;
  if (cache.device().is_cpu()) {
    cpu::attention_cache_write(cache, new_values, start);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::attention_cache_write(cache, new_values, start);
#else
  fail(op, "tensors are on ", cache.device().str(), " but this build has no CUDA backend");
#endif
}

namespace {

// Checks one cache write at device positions; on the CPU also the host-side bounds, and writes.
// Returns true when the write is left to the caller's CUDA launch.
bool check_cache_write_at(const char* op, Tensor& cache, const Tensor& new_values, const Tensor& starts,
                          const Tensor& counts) {
  check_cache_write(op, cache, new_values);
  const int64_t B = cache.size(0), T = new_values.size(2), S = cache.size(2);
  check_lengths(op, "starts", starts, B, cache.device());
  if (counts.defined()) check_lengths(op, "counts", counts, B, cache.device());
  if (new_values.numel() == 0) return false;
  if (cache.device().is_cpu()) {
    const int32_t* st = starts.data<int32_t>();
    const int32_t* n = counts.defined() ? counts.data<int32_t>() : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t count = n ? n[b] : T;
      MARLIN_CHECK(count >= 0 && count <= T, op, "counts[", b, "]=", count, " must be in [0, T=",
                   T, "]");
      MARLIN_CHECK(st[b] >= 0 && st[b] + count <= S, op, "row ", b, ": positions [", st[b], ", ",
                   st[b] + count, ") exceed the cache's S_max=", S);
    }
    cpu::attention_cache_write(cache, new_values, st, n);
    return false;
  }
#ifndef MARLIN_WITH_CUDA
  fail(op, "tensors are on ", cache.device().str(), " but this build has no CUDA backend");
#endif
  return true;
}

}  // namespace

void attention_cache_write(Tensor& cache, const Tensor& new_values, const Tensor& starts,
                           const Tensor& counts) {
  if (!check_cache_write_at("attention_cache_write", cache, new_values, starts, counts)) return;
#ifdef MARLIN_WITH_CUDA
  cuda::attention_cache_write(cache, new_values, starts, counts);
#endif
}

namespace {

// attention_cache_write_kv's checks (and on the CPU its writes); true when the CUDA launch that
// writes both is left to the caller.
bool check_cache_write_kv(const char* op, Tensor& k_cache, const Tensor& k_new, Tensor& v_cache,
                          const Tensor& v_new, const Tensor& starts, const Tensor& counts) {
  MARLIN_CHECK(k_new.defined() && v_new.defined() && k_new.shape() == v_new.shape() &&
                   k_cache.shape() == v_cache.shape() && k_cache.dtype() == v_cache.dtype() &&
                   k_cache.device() == v_cache.device(),
               op, "keys and values (and their caches) must have the same shapes, dtype and device, got ",
               k_new.defined() ? k_new.describe() : "undefined", " and ",
               v_new.defined() ? v_new.describe() : "undefined");
  const bool k_cuda = check_cache_write_at(op, k_cache, k_new, starts, counts);
  const bool v_cuda = check_cache_write_at(op, v_cache, v_new, starts, counts);
  return k_cuda && v_cuda;
}

}  // namespace

void attention_cache_write_kv(Tensor& k_cache, const Tensor& k_new, Tensor& v_cache,
                              const Tensor& v_new, const Tensor& starts, const Tensor& counts) {
  if (!check_cache_write_kv("attention_cache_write_kv", k_cache, k_new, v_cache, v_new, starts, counts)) return;
#ifdef MARLIN_WITH_CUDA
  cuda::attention_cache_write_kv(k_cache, k_new, v_cache, v_new, starts, counts);
#endif
}

void rope_cache_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                      const RopeParams& params, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
                      const Tensor& counts) {
  constexpr const char* op = "rope_cache_write";
  check_rope(op, q, k, positions, params);
  MARLIN_CHECK(k.defined() && v.defined() && v.dim() == 3 && v.shape() == k.shape() && v.dtype() == k.dtype() &&
                   v.device() == k.device() && (v.strides()[2] == 1 || v.size(2) == 1),
               op, "k and v must be [tokens, heads, head_dim] of one shape, dtype and device, head_dim "
               "contiguous, got ", k.defined() ? k.describe() : "undefined", " and ",
               v.defined() ? v.describe() : "undefined");
  MARLIN_CHECK(k_cache.dim() == 4 && k_cache.size(0) >= 1 && k.size(0) % k_cache.size(0) == 0, op,
               "the caches must be [B, heads, S_max, head_dim] with B dividing the ", k.size(0),
               " tokens, got ", k_cache.describe());
  const int64_t B = k_cache.size(0), T = k.size(0) / B, H = k.size(1), D = k.size(2);
  // The [B, heads, T, head_dim] views attention_cache_write_kv takes (no copy).
  const Tensor k4 = k.view({B, T, H, D}).transpose(1, 2);
  const Tensor v4 = v.view({B, T, H, D}).transpose(1, 2);
  if (q.device().is_cpu()) rope(q, k, positions, params);  // the CPU writes the keys in the check
  if (!check_cache_write_kv(op, k_cache, k4, v_cache, v4, starts, counts)) return;
#ifdef MARLIN_WITH_CUDA
  cuda::rope_cache_write(q, k, v, positions, params.inv_freq, params.layout == RopeLayout::interleaved,
                         params.attention_factor, k_cache, v_cache, starts, counts);
#endif
}

namespace {

// Everything mla_rope_cache_write checks, naming `op`.
void check_mla_rope_cache_write(const char* op, const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent,
                                const Tensor& positions, const RopeParams& params, const Tensor& norm_weight,
                                const Tensor& cache, const Tensor& starts, const Tensor& counts) {
  check_rope(op, q_rope, k_rope, positions, params);
  MARLIN_CHECK(k_rope.defined() && k_rope.size(1) == 1 && latent.defined() && latent.dim() == 3 &&
                   latent.size(0) == k_rope.size(0) && latent.size(1) == 1 &&
                   (latent.strides()[2] == 1 || latent.size(2) == 1),
               op, "k_rope and latent must be [tokens, 1, Dr] and [tokens, 1, R] (last dim contiguous), got ",
               k_rope.defined() ? k_rope.describe() : "undefined", " and ",
               latent.defined() ? latent.describe() : "undefined");
  check_same(op, k_rope, latent, "latent");
  const int64_t R = latent.size(2), Dr = k_rope.size(2), tokens = latent.size(0);
  check_float(op, "cache [B, 1, S_max, R + Dr]", cache, 4);
  check_same(op, latent, cache, "cache");
  MARLIN_CHECK(cache.size(1) == 1 && cache.size(3) == R + Dr && cache.size(0) >= 1 && tokens % cache.size(0) == 0,
               op, "cache must be [B, 1, S_max, R + Dr = ", R + Dr, "] with B dividing the ", tokens,
               " tokens, got ", cache.describe());
  MARLIN_CHECK(norm_weight.defined() && norm_weight.dim() == 1 && norm_weight.numel() == R &&
                   norm_weight.dtype() == latent.dtype() && norm_weight.device() == latent.device() &&
                   norm_weight.is_contiguous(),
               op, "norm_weight must be [R=", R, "] in the latent's dtype and device, got ",
               norm_weight.defined() ? norm_weight.describe() : "undefined");
  check_lengths(op, "starts", starts, cache.size(0), cache.device());
  if (counts.defined()) check_lengths(op, "counts", counts, cache.size(0), cache.device());
}

}  // namespace

void mla_rope_cache_write(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                          const RopeParams& params, const Tensor& norm_weight, double eps, Tensor& cache,
                          const Tensor& starts, const Tensor& counts) {
  constexpr const char* op = "mla_rope_cache_write";
  check_mla_rope_cache_write(op, q_rope, k_rope, latent, positions, params, norm_weight, cache, starts, counts);
  const int64_t R = latent.size(2), Dr = k_rope.size(2), tokens = latent.size(0);
  const int64_t B = cache.size(0), T = tokens / B;
  if (tokens == 0) return;
  if (latent.device().is_cpu()) {
    // The reference: the separate ops (rms_norm, rope, the cache write) on the CPU.
    const Tensor normed = rms_norm(latent, norm_weight, eps);
    rope(q_rope, k_rope, positions, params);
    Tensor rows = Tensor::empty({tokens, 1, R + Dr}, latent.dtype(), latent.device());
    rows.narrow(2, 0, R).copy_from(normed);
    rows.narrow(2, R, Dr).copy_from(k_rope);
    attention_cache_write(cache, rows.view({B, T, 1, R + Dr}).transpose(1, 2), starts, counts);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  // The caller has checked the positions on the host (KVCache does); the kernel drops any
  // outside the cache rather than write there.
  cuda::mla_rope_cache_write(q_rope, k_rope, latent, positions, params.inv_freq,
                             params.layout == RopeLayout::interleaved, params.attention_factor, norm_weight,
                             static_cast<float>(eps), cache, starts, counts);
#else
  fail(op, "tensors are on ", cache.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor mla_rope_cache_write_head_matmul(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent,
                                        const Tensor& positions, const RopeParams& params, const Tensor& norm_weight,
                                        double eps, Tensor& cache, const Tensor& starts, const Tensor& counts,
                                        const Tensor& x, const Tensor& w) {
  constexpr const char* op = "mla_rope_cache_write_head_matmul";
  check_mla_rope_cache_write(op, q_rope, k_rope, latent, positions, params, norm_weight, cache, starts, counts);
  Tensor out = head_matmul_output(op, x, w);
  MARLIN_CHECK(x.device() == latent.device(), op, "x must be on the latent's device ", latent.device().str(),
               ", got ", x.describe());
#ifdef MARLIN_WITH_CUDA
  if (latent.device().is_cuda() && latent.size(0) > 0 && out.numel() > 0 &&
      cuda::mla_head_matmul_rope_cache_write(x, w, out, q_rope, k_rope, latent, positions, params.inv_freq,
                                             params.layout == RopeLayout::interleaved, params.attention_factor,
                                             norm_weight, static_cast<float>(eps), cache, starts, counts))
    return out;
#endif
  mla_rope_cache_write(q_rope, k_rope, latent, positions, params, norm_weight, eps, cache, starts, counts);
  return mla_head_matmul(x, w);
}

Tensor rope_attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                             const RopeParams& params, Tensor& k_cache, Tensor& v_cache, const Tensor& starts,
                             float scale, int64_t sliding_window) {
  constexpr const char* op = "rope_attention_decode";
  check_rope(op, q, k, positions, params);
  MARLIN_CHECK(v.defined() && v.dim() == 3 && v.shape() == k.shape() && (v.strides()[2] == 1 || v.size(2) == 1),
               op, "v must be [B, Hkv, D] like k ", k.describe(), " with a contiguous head_dim, got ",
               v.defined() ? v.describe() : "an undefined tensor");
  check_same(op, q, k, "k");
  check_same(op, q, v, "v");
  check_float(op, "k_cache [B, Hkv, S_max, D]", k_cache, 4);
  check_float(op, "v_cache [B, Hkv, S_max, D]", v_cache, 4);
  check_same(op, q, k_cache, "k_cache");
  check_same(op, q, v_cache, "v_cache");
  const int64_t B = q.size(0), Hq = q.size(1), Hkv = k.size(1), D = q.size(2);
  MARLIN_CHECK(k_cache.shape() == v_cache.shape() && k_cache.size(0) == B && k_cache.size(1) == Hkv &&
                   k_cache.size(3) == D && k.size(0) == B && k.size(2) == D,
               op, "q ", q.describe(), ", k ", k.describe(), " and the caches ", k_cache.describe(), ", ",
               v_cache.describe(), " must be [B, Hq, D], [B, Hkv, D] and [B, Hkv, S_max, D]");
  check_heads(op, Hq, Hkv, D, scale, sliding_window);
  check_lengths(op, "starts", starts, B, q.device());
  if (q.device().is_cpu()) {
    // The reference: the same steps as separate ops (rope_cache_write checks starts on the host).
    rope_cache_write(q, k, v, positions, params, k_cache, v_cache, starts);
    Tensor seq_lens = Tensor::empty({B}, DType::i32, q.device());
    add_lengths(starts, 1, {}, seq_lens);
    return attention_decode(q.contiguous(), k_cache, v_cache, seq_lens, scale, sliding_window);
  }
#ifdef MARLIN_WITH_CUDA
  Tensor out = Tensor::empty({B, Hq, D}, q.dtype(), q.device());
  if (B > 0)
    cuda::rope_attention_decode(q, k, v, positions, params.inv_freq, params.layout == RopeLayout::interleaved,
                                params.attention_factor, k_cache, v_cache, starts, scale, sliding_window, out);
  return out;
#else
  fail(op, "tensors are on ", q.device().str(), " but this build has no CUDA backend");
#endif
}

void add_lengths(const Tensor& lengths, int64_t n, const Tensor& counts, const Tensor& out) {
  constexpr const char* op = "add_lengths";
  MARLIN_CHECK(out.defined(), op, "out must be defined");
  const int64_t B = out.numel();
  check_lengths(op, "out", out, B, out.device());
  check_lengths(op, "lengths", lengths, B, out.device());
  if (counts.defined()) check_lengths(op, "counts", counts, B, out.device());
  MARLIN_CHECK(n >= INT32_MIN && n <= INT32_MAX, op, "n=", n, " does not fit i32");
  if (out.device().is_cpu()) {
    cpu::add_lengths(lengths.data<int32_t>(), n, counts.defined() ? counts.data<int32_t>() : nullptr,
                     out.data<int32_t>(), B);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::add_lengths(lengths, n, counts, out);
#else
  fail(op, "tensors are on ", out.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor sequence_positions(const Tensor& lengths, int64_t T) {
  constexpr const char* op = "sequence_positions";
  MARLIN_CHECK(lengths.defined(), op, "lengths must be defined");
  check_lengths(op, "lengths", lengths, lengths.numel(), lengths.device());
  MARLIN_CHECK(T >= 1, op, "T must be >= 1, got ", T);
  Tensor out = Tensor::empty({lengths.numel() * T}, DType::i32, lengths.device());
  if (out.numel() == 0) return out;
  if (out.device().is_cpu()) {
    cpu::sequence_positions(lengths.data<int32_t>(), lengths.numel(), T, out.data<int32_t>());
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::sequence_positions(lengths, T, out);
  return out;
#else
  fail(op, "tensors are on ", out.device().str(), " but this build has no CUDA backend");
#endif
}

}  // namespace marlin::ops
