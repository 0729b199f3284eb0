// Float64 reference of ops::mla_attention and random strided MLA operands, shared by the CPU
// test and the CUDA-vs-CPU test.
#pragma once

#include <cmath>
#include <vector>

#include "marlin/mla_ops.h"
#include "test_util.h"

namespace marlin::testing {

// A [B, rows, heads, D] operand's value at (b, r, h, d), heads of size 1 broadcast.
struct DenseOperand {
  std::vector<double> v;
  int64_t rows, heads, dim;
  double at(int64_t b, int64_t r, int64_t h, int64_t d) const {
    if (heads == 1) h = 0;
    return v[static_cast<size_t>(((b * rows + r) * heads + h) * dim + d)];
  }
};

inline DenseOperand dense(const Tensor& t) {
  return {to_double(t.contiguous()), t.size(1), t.size(2), t.size(3)};
}

// out [B, T, H, Dv] = softmax(scale * (q_nope . k_nope + q_rope . k_rope)) v, causal with query t
// of row b at position lens[b] - T + t. With new_tokens (right-padded rows) query t sits at
// lens[b] - new_tokens[b] + t, and a padding query (t >= new_tokens[b]) at lens[b] - 1.
inline std::vector<double> reference_mla_attention(const Tensor& q_nope, const Tensor& q_rope,
                                                   const Tensor& k_nope, const Tensor& k_rope,
                                                   const Tensor& v, const std::vector<int>& lens,
                                                   double scale, const std::vector<int>& new_tokens = {}) {
  const DenseOperand qn = dense(q_nope), qr = dense(q_rope), kn = dense(k_nope),
                     kr = dense(k_rope), vv = dense(v);
  const int64_t B = q_nope.size(0), T = q_nope.size(1), H = q_nope.size(2);
  const int64_t Dn = qn.dim, Dr = qr.dim, Dv = vv.dim;
  std::vector<double> out(static_cast<size_t>(B * T * H * Dv), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t len = lens[static_cast<size_t>(b)];
        const int64_t real = new_tokens.empty() ? T : new_tokens[static_cast<size_t>(b)];
        const int64_t pos = std::min(len - real + t, len - 1);
        std::vector<double> s(static_cast<size_t>(pos + 1));
        double m = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < Dn; ++d) dot += qn.at(b, t, h, d) * kn.at(b, j, h, d);
          for (int64_t d = 0; d < Dr; ++d) dot += qr.at(b, t, h, d) * kr.at(b, j, h, d);
          s[static_cast<size_t>(j)] = dot * scale;
          m = std::max(m, dot * scale);
        }
        double l = 0;
        for (double& x : s) l += (x = std::exp(x - m));
        double* o = out.data() + ((b * T + t) * H + h) * Dv;
        for (int64_t j = 0; j <= pos; ++j)
          for (int64_t d = 0; d < Dv; ++d) o[d] += s[static_cast<size_t>(j)] / l * vv.at(b, j, h, d);
      }
  return out;
}

// out [M, H, N] = x [M, H, K] @ w [H, K, N] in float64.
inline std::vector<double> reference_head_matmul(const Tensor& x, const Tensor& w) {
  const std::vector<double> xv = to_double(x.contiguous()), wv = to_double(w);
  const int64_t M = x.size(0), H = x.size(1), K = x.size(2), N = w.size(2);
  std::vector<double> out(static_cast<size_t>(M * H * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
          out[static_cast<size_t>((m * H + h) * N + n)] +=
              xv[static_cast<size_t>((m * H + h) * K + k)] * wv[static_cast<size_t>((h * K + k) * N + n)];
  return out;
}

// The operands of one mla_attention case (made on the CPU, then moved to `device` before slicing) as the layer makes them: q_nope and q_rope are the two
// slices of one [B, T, H, Dn + Dr] projection; in the latent (absorbed) form k_nope, k_rope and
// v are slices of one cache [B, S, 1, Dn + Dr] (v = k_nope), in the expanded form k_nope and v
// slices of one [B, S, H, Dn + Dv] projection and k_rope a slice of [B, S, 1, L + Dr].
struct MlaCase {
  Tensor q_nope, q_rope, k_nope, k_rope, v, seq_lens;
  std::vector<int> lens;
};

inline MlaCase make_mla_case(bool latent, int64_t B, int64_t T, int64_t H, int64_t S, int64_t Dn,
                             int64_t Dr, int64_t Dv, std::vector<int> lens, DType dtype,
                             uint64_t seed, Device device = Device::cpu()) {
  MlaCase c;
  const Tensor q = random_tensor({B, T, H, Dn + Dr}, dtype, seed).to(device);
  c.q_nope = q.narrow(3, 0, Dn);
  c.q_rope = q.narrow(3, Dn, Dr);
  if (latent) {
    const Tensor cache = random_tensor({B, S, 1, Dn + Dr}, dtype, seed + 1).to(device);
    c.k_nope = cache.narrow(3, 0, Dn);
    c.k_rope = cache.narrow(3, Dn, Dr);
    c.v = c.k_nope;
  } else {
    const Tensor kv = random_tensor({B, S, H, Dn + Dv}, dtype, seed + 1).to(device);
    const Tensor ckv = random_tensor({B, S, 1, 24 + Dr}, dtype, seed + 2).to(device);
    c.k_nope = kv.narrow(3, 0, Dn);
    c.v = kv.narrow(3, Dn, Dv);
    c.k_rope = ckv.narrow(3, 24, Dr);
  }
  c.lens = std::move(lens);
  c.seq_lens = Tensor::from_vector(c.lens, {B}, DType::i32).to(device);
  return c;
}

}  // namespace marlin::testing
