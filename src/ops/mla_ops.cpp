// ops::mla_attention, mla_head_matmul and mla_attention_head_matmul: the shape, dtype and device
// checks shared by the backends, then dispatch.
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu/mla_kernels.h"
#include "marlin/mla_ops.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/mla_kernels_cuda.h"
#endif

namespace marlin::ops {
namespace {

std::string describe(const Tensor& t) { return t.defined() ? t.describe() : "an undefined tensor"; }

void check_operand(const char* op, const char* name, const Tensor& t, const Tensor& q) {
  MARLIN_CHECK(t.defined() && t.dim() == 4, op, name, " must be 4-D, got ", describe(t));
  MARLIN_CHECK(t.dtype() == q.dtype(), op, name, " must have q_nope's dtype ",
               dtype_name(q.dtype()), ", got ", t.describe());
  MARLIN_CHECK(t.device() == q.device(), op, name, " on ", t.device().str(), " but q_nope on ",
               q.device().str());
  MARLIN_CHECK(t.size(3) <= 1 || t.strides()[3] == 1, op, name,
               " must have a contiguous last dim, got ", t.describe());
}

void check_heads(const char* op, const char* name, const Tensor& t, int64_t H) {
  MARLIN_CHECK(t.size(2) == 1 || t.size(2) == H, op, name, " must have 1 or H=", H,
               " heads, got ", t.describe());
}

// Everything ops::mla_attention checks (naming `op`): fills `args` and returns the output
// [B, T, H, Dv], not yet written.
Tensor prepare_attention(const char* op, const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                         const Tensor& k_rope, const Tensor& v, const Tensor& seq_lens, float scale,
                         const Tensor& new_tokens, kernels::MlaAttentionArgs& args) {
  MARLIN_CHECK(q_nope.defined() && q_nope.dim() == 4, op, "q_nope must be [B, T, H, Dn], got ",
               describe(q_nope));
  const DType dt = q_nope.dtype();
  MARLIN_CHECK(dt == DType::f32 || dt == DType::f16 || dt == DType::bf16, op,
               "tensors must be f32, f16 or bf16, got ", q_nope.describe());
  check_operand(op, "q_nope [B, T, H, Dn]", q_nope, q_nope);
  check_operand(op, "q_rope [B, T, H, Dr]", q_rope, q_nope);
  check_operand(op, "k_nope [B, S, Hn, Dn]", k_nope, q_nope);
  check_operand(op, "k_rope [B, S, Hr, Dr]", k_rope, q_nope);
  check_operand(op, "v [B, S, Hv, Dv]", v, q_nope);
  const int64_t B = q_nope.size(0), T = q_nope.size(1), H = q_nope.size(2);
  const int64_t Dn = q_nope.size(3), Dr = q_rope.size(3), Dv = v.size(3), S = k_nope.size(1);
  MARLIN_CHECK(q_rope.size(0) == B && q_rope.size(1) == T && q_rope.size(2) == H, op,
               "q_rope must be [B, T, H, Dr] with q_nope's B, T, H, got q_nope ",
               q_nope.describe(), " and q_rope ", q_rope.describe());
  MARLIN_CHECK(k_nope.size(0) == B && k_nope.size(3) == Dn, op,
               "k_nope must be [B, S, Hn, Dn] with q_nope's B and Dn, got ", k_nope.describe(),
               " for q_nope ", q_nope.describe());
  MARLIN_CHECK(k_rope.size(0) == B && k_rope.size(1) == S && k_rope.size(3) == Dr, op,
               "k_rope must be [B, S, Hr, Dr] with k_nope's B, S and q_rope's Dr, got ",
               k_rope.describe());
  MARLIN_CHECK(v.size(0) == B && v.size(1) == S, op, "v must be [B, S, Hv, Dv] with k_nope's B, S, got ",
               v.describe(), " and k_nope ", k_nope.describe());
  check_heads(op, "k_nope", k_nope, H);
  check_heads(op, "k_rope", k_rope, H);
  check_heads(op, "v", v, H);
  MARLIN_CHECK(Dn >= 1 && Dr >= 1 && Dv >= 1, op, "head dims must be >= 1, got Dn=", Dn,
               " Dr=", Dr, " Dv=", Dv);
  MARLIN_CHECK(T <= S, op, "T=", T, " queries do not fit S=", S, " keys");
  MARLIN_CHECK(std::isfinite(scale), op, "scale must be finite, got ", scale);
  MARLIN_CHECK(seq_lens.defined() && seq_lens.dim() == 1 && seq_lens.size(0) == B &&
                   seq_lens.dtype() == DType::i32 && seq_lens.is_contiguous(),
               op, "seq_lens must be contiguous i32 [B] = [", B, "], got ", describe(seq_lens));
  MARLIN_CHECK(seq_lens.device() == q_nope.device(), op, "seq_lens on ",
               seq_lens.device().str(), " but q_nope on ", q_nope.device().str());

  if (new_tokens.defined()) {
    MARLIN_CHECK(new_tokens.dim() == 1 && new_tokens.size(0) == B && new_tokens.dtype() == DType::i32 &&
                     new_tokens.is_contiguous(),
                 op, "new_tokens must be contiguous i32 [B] = [", B, "], got ", new_tokens.describe());
    MARLIN_CHECK(new_tokens.device() == q_nope.device(), op, "new_tokens on ",
                 new_tokens.device().str(), " but q_nope on ", q_nope.device().str());
  }

  if (q_nope.device().is_cuda()) {
    MARLIN_CHECK(dt != DType::f32, op, "f32 runs on the CPU only; use f16 or bf16 on ", q_nope.device().str());
    MARLIN_CHECK(Dn <= 512 && Dv <= 512 && Dr <= 64, op, "the CUDA kernel takes Dn, Dv <= 512 and ",
                 "Dr <= 64, got Dn=", Dn, " Dv=", Dv, " Dr=", Dr);
  }

  Tensor out = Tensor::empty({B, T, H, Dv}, dt, q_nope.device());
  if (out.numel() == 0) return out;
  args.q_nope = kernels::mla_operand(q_nope);
  args.q_rope = kernels::mla_operand(q_rope);
  args.k_nope = kernels::mla_operand(k_nope);
  args.k_rope = kernels::mla_operand(k_rope);
  args.v = kernels::mla_operand(v);
  args.seq_lens = seq_lens.data<int32_t>();
  if (new_tokens.defined()) args.new_tokens = new_tokens.data<int32_t>();
  args.out = out.data_ptr();
  args.B = static_cast<int>(B);
  args.T = static_cast<int>(T);
  args.H = static_cast<int>(H);
  args.S = static_cast<int>(S);
  args.Dn = static_cast<int>(Dn);
  args.Dr = static_cast<int>(Dr);
  args.Dv = static_cast<int>(Dv);
  args.scale = scale;
  if (q_nope.device().is_cpu()) {
    // The lengths are only readable here; the CUDA kernel clamps instead of failing.
    for (int64_t b = 0; b < B; ++b) {
      if (args.new_tokens == nullptr) {
        MARLIN_CHECK(args.seq_lens[b] >= T && args.seq_lens[b] <= S, op, "seq_lens[", b, "]=",
                     args.seq_lens[b], " must be in [T, S] = [", T, ", ", S, "]");
        continue;
      }
      const int32_t len = args.seq_lens[b], n = args.new_tokens[b];
      MARLIN_CHECK(len >= 1 && len <= S, op, "seq_lens[", b, "]=", len, " must be in [1, S] = [1, ",
                   S, "]");
      MARLIN_CHECK(n >= 0 && n <= T && n <= len, op, "new_tokens[", b, "]=", n,
                   " must be in [0, min(T, seq_lens[b])] = [0, ", std::min<int64_t>(T, len), "]");
    }
  }
  return out;
}

// Runs the attention that prepare_attention set up (on `device`, the tensors' device).
void run_attention([[maybe_unused]] const char* op, const kernels::MlaAttentionArgs& args, DType dt, const Device& device) {
  if (device.is_cpu()) return cpu::mla_attention(args, dt);
#ifdef MARLIN_WITH_CUDA
  cuda::mla_attention(args, dt, device.index);
#else
  fail(op, "tensors are on ", device.str(), " but this build has no CUDA backend");
#endif
}

void run_head_matmul([[maybe_unused]] const char* op, const Tensor& x, const Tensor& w, Tensor& out) {
  if (x.device().is_cpu()) return cpu::mla_head_matmul(x, w, out);
#ifdef MARLIN_WITH_CUDA
  cuda::mla_head_matmul(x, w, out);
#else
  fail(op, "tensors are on ", x.device().str(), " but this build has no CUDA backend");
#endif
}

}  // namespace

Tensor mla_attention(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                     const Tensor& k_rope, const Tensor& v, const Tensor& seq_lens, float scale,
                     const Tensor& new_tokens) {
  constexpr const char* op = "mla_attention";
  kernels::MlaAttentionArgs args;
  Tensor out = prepare_attention(op, q_nope, q_rope, k_nope, k_rope, v, seq_lens, scale, new_tokens, args);
  if (out.numel() > 0) run_attention(op, args, q_nope.dtype(), q_nope.device());
  return out;
}

Tensor head_matmul_output(const char* op, const Tensor& x, const Tensor& w) {
  MARLIN_CHECK(x.defined() && x.dim() == 3, op, "x must be [M, H, K], got ", describe(x));
  MARLIN_CHECK(w.defined() && w.dim() == 3 && w.is_contiguous(), op,
               "w must be contiguous [H, K, N], got ", describe(w));
  MARLIN_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f16 || x.dtype() == DType::bf16, op,
               "x must be f32, f16 or bf16, got ", x.describe());
  MARLIN_CHECK(w.dtype() == x.dtype() && w.device() == x.device(), op,
               "w must have x's dtype and device, got x ", x.describe(), " and w ", w.describe());
  MARLIN_CHECK(w.size(0) == x.size(1) && w.size(1) == x.size(2), op, "w must be [H, K] = [",
               x.size(1), ", ", x.size(2), ", N] for x ", x.describe(), ", got ", w.describe());
  MARLIN_CHECK(x.size(2) <= 1 || x.strides()[2] == 1, op, "x must have a contiguous last dim, got ",
               x.describe());
  MARLIN_CHECK(x.device().is_cpu() || x.dtype() != DType::f32, op, "f32 runs on the CPU only; use f16 or bf16 on ",
               x.device().str());
  return Tensor::empty({x.size(0), x.size(1), w.size(2)}, x.dtype(), x.device());
}

Tensor mla_head_matmul(const Tensor& x, const Tensor& w) {
  constexpr const char* op = "mla_head_matmul";
  Tensor out = head_matmul_output(op, x, w);
  if (out.numel() > 0) run_head_matmul(op, x, w, out);
  return out;
}

Tensor mla_attention_head_matmul(const Tensor& q_nope, const Tensor& q_rope, const Tensor& k_nope,
                                 const Tensor& k_rope, const Tensor& v, const Tensor& seq_lens, float scale,
                                 const Tensor& w, const Tensor& new_tokens) {
  constexpr const char* op = "mla_attention_head_matmul";
  kernels::MlaAttentionArgs args;
  const Tensor attended =
      prepare_attention(op, q_nope, q_rope, k_nope, k_rope, v, seq_lens, scale, new_tokens, args);
  const Tensor x = attended.view({attended.size(0) * attended.size(1), attended.size(2), attended.size(3)});
  Tensor out = head_matmul_output(op, x, w);
  if (out.numel() == 0) return out;
#ifdef MARLIN_WITH_CUDA
  if (x.device().is_cuda() && cuda::mla_attention_head_matmul(args, x.dtype(), x.device().index, x, w, out))
    return out;
#endif
  run_attention(op, args, x.dtype(), x.device());
  run_head_matmul(op, x, w, out);
  return out;
}

}  // namespace marlin::ops
