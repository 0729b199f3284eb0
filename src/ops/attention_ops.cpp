// ops::attention_*: the shape, dtype and device checks shared by the backends, then dispatch.
#include <cmath>

#include "kernels/cpu/attention_kernels.h"
#include "marlin/attention.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/attention_kernels_cuda.h"
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
                        const Tensor& seq_lens, float scale, int64_t sliding_window) {
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
  MARLIN_CHECK(seq_lens.defined() && seq_lens.dim() == 1 && seq_lens.size(0) == q.size(0) &&
                   seq_lens.dtype() == DType::i32 && seq_lens.is_contiguous(),
               op, "seq_lens must be i32 [B] = [", q.size(0), "], got ",
               seq_lens.defined() ? seq_lens.describe() : "an undefined tensor");
  MARLIN_CHECK(seq_lens.device() == q.device(), op, "seq_lens on ", seq_lens.device().str(),
               " but q on ", q.device().str());
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (q.numel() == 0) return out;
  if (q.device().is_cpu()) {
    // The lengths are only readable here; the CUDA kernel clamps instead of failing.
    const int32_t* lens = seq_lens.data<int32_t>();
    for (int64_t b = 0; b < q.size(0); ++b)
      MARLIN_CHECK(lens[b] >= q.size(1) && lens[b] <= k_cache.size(2), op, "seq_lens[", b,
                   "]=", lens[b], " must be in [T, S_max] = [", q.size(1), ", ",
                   k_cache.size(2), "]");
    cpu::attention_extend(q, k_cache, v_cache, seq_lens, scale, sliding_window, out);
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::attention_extend(q, k_cache, v_cache, seq_lens, scale, sliding_window, out);
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
  check_float(op, "cache [B, H, S_max, D]", cache, 4);
  MARLIN_CHECK(new_values.defined() && new_values.dim() == 4, op,
               "new values must be [B, H, T, D], got ",
               new_values.defined() ? new_values.describe() : "an undefined tensor");
  check_same(op, cache, new_values, "new values");
  MARLIN_CHECK(new_values.size(0) == cache.size(0) && new_values.size(1) == cache.size(1) &&
                   new_values.size(3) == cache.size(3),
               op, "new values ", new_values.describe(), " do not match cache ", cache.describe(),
               " in B, H or D");
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

}  // namespace marlin::ops
