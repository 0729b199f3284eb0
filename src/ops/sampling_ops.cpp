// ops::sample_token / ops::repetition_penalty: argument checks, then the backend.
#include <cmath>

#include "kernels/cpu/sampling_kernels.h"
#include "marlin/sampler.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/sampling_kernels_cuda.h"
#endif

namespace marlin::ops {
namespace {

void check_logits(const char* op, const Tensor& logits) {
  MARLIN_CHECK(logits.defined() && (logits.dim() == 1 || (logits.dim() == 2 && logits.size(0) == 1)),
               op, "logits must be [V] or [1, V], got ",
               logits.defined() ? logits.describe() : "an undefined tensor");
  MARLIN_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::f16 ||
                   logits.dtype() == DType::bf16,
               op, "logits must be f32, f16 or bf16, got ", logits.describe());
  MARLIN_CHECK(logits.is_contiguous() && logits.numel() >= 1, op,
               "logits must be contiguous and not empty, got ", logits.describe());
  MARLIN_CHECK(logits.numel() < (int64_t{1} << 31), op, "a vocabulary of ", logits.numel(),
               " entries exceeds 2^31");
}

}  // namespace

int64_t sample_token(const Tensor& logits, const SamplingParams& p) {
  constexpr const char* op = "sample_token";
  check_logits(op, logits);
  MARLIN_CHECK(p.inv_temperature >= 0.0f && std::isfinite(p.inv_temperature), op,
               "inverse temperature must be finite and >= 0, got ", p.inv_temperature);
  MARLIN_CHECK(p.top_k >= 0, op, "top_k must be >= 0, got ", p.top_k);
  MARLIN_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, op, "top_p must be in (0, 1], got ", p.top_p);
  int64_t id;
  if (logits.device().is_cpu()) {
    id = cpu::sample_token(logits, p);
  } else {
#ifdef MARLIN_WITH_CUDA
    id = cuda::sample_token(logits, p);
#else
    fail(op, "logits are on ", logits.device().str(), " but this build has no CUDA backend");
#endif
  }
  MARLIN_CHECK(id >= 0 && id < logits.numel(), op, "no logit of ", logits.describe(),
               " is a number");
  return id;
}

Tensor argmax_rows(const Tensor& logits) {
  constexpr const char* op = "argmax_rows";
  MARLIN_CHECK(logits.defined() && logits.dim() >= 1 && logits.size(-1) >= 1, op,
               "logits must be [..., V] with V >= 1, got ",
               logits.defined() ? logits.describe() : "an undefined tensor");
  MARLIN_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::f16 ||
                   logits.dtype() == DType::bf16,
               op, "logits must be f32, f16 or bf16, got ", logits.describe());
  MARLIN_CHECK(logits.is_contiguous(), op, "logits must be contiguous, got ", logits.describe());
  const int64_t V = logits.size(-1), rows = logits.numel() / V;
  MARLIN_CHECK(V < (int64_t{1} << 31) && rows < (int64_t{1} << 31), op, "too large: ", logits.describe());
  const Tensor flat = logits.view({rows, V});
  Tensor out = Tensor::empty({rows}, DType::i32, logits.device());
  if (logits.device().is_cpu()) {
    int32_t* o = out.data<int32_t>();
    for (int64_t r = 0; r < rows; ++r)
      o[r] = static_cast<int32_t>(cpu::sample_token(flat.select(0, r), SamplingParams{.inv_temperature = 0.0f}));
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::argmax_rows(flat, out);
  return out;
#else
  fail(op, "logits are on ", logits.device().str(), " but this build has no CUDA backend");
#endif
}

Tensor repetition_penalty(const Tensor& logits, const std::vector<int64_t>& ids, float penalty) {
  constexpr const char* op = "repetition_penalty";
  check_logits(op, logits);
  MARLIN_CHECK(penalty > 0.0f && std::isfinite(penalty), op,
               "penalty must be finite and > 0, got ", penalty);
  for (int64_t id : ids)
    MARLIN_CHECK(id >= 0 && id < logits.numel(), op, "generated id ", id,
                 " out of range for a vocabulary of ", logits.numel());
  Tensor out = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  if (logits.device().is_cpu()) {
    cpu::repetition_penalty(logits, ids, penalty, out);
    return out;
  }
#ifdef MARLIN_WITH_CUDA
  std::vector<int32_t> ids32(ids.begin(), ids.end());
  const Tensor ids_device =
      Tensor::from_vector(ids32, {static_cast<int64_t>(ids32.size())}, DType::i32)
          .to(logits.device());
  cuda::repetition_penalty(logits, ids_device, penalty, out);
  return out;
#else
  fail(op, "logits are on ", logits.device().str(), " but this build has no CUDA backend");
#endif
}

}  // namespace marlin::ops
