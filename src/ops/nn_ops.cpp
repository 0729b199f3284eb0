// ops_nn.h: the argument checks of the nn building-block ops, shared by every backend, then
// dispatch to kernels/cpu or kernels/cuda by the tensors' device.
#include <string>

#include "kernels/cpu/nn_kernels.h"
#include "kernels/row_layout.h"
#include "marlin/ops_nn.h"
#include "ops/nn_internal.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/nn_kernels_cuda.h"
#endif

namespace marlin::ops {
namespace {

std::string describe(const Tensor& t) { return t.defined() ? t.describe() : "an undefined tensor"; }

bool is_activation_dtype(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// x [..., N]: an activation dtype, last dim contiguous, leading dims expressible as row strides.
void check_rows(const char* op, const char* name, const Tensor& x) {
  MARLIN_CHECK(x.defined() && x.dim() >= 1, op, name, " must be a tensor [..., N], got ", describe(x));
  MARLIN_CHECK(is_activation_dtype(x.dtype()), op, name, " must be f32, f16 or bf16, got ", x.describe());
  MARLIN_CHECK(x.size(-1) <= 1 || x.strides().back() == 1, op, name,
               " must have a contiguous last dim, got ", x.describe());
  kernels::RowLayout layout;
  MARLIN_CHECK(kernels::make_row_layout(x, layout), op, name,
               " has too many strided leading dims: ", x.describe());
}

void check_same_device(const char* op, const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  MARLIN_CHECK(a.device() == b.device(), op, an, " on ", a.device().str(), " but ", bn, " on ",
               b.device().str());
}

// The output: `out` checked against the shape, dtype and device it must have, or a new tensor.
Tensor output(const char* op, const Tensor& out, const Shape& shape, DType dtype, Device device) {
  if (!out.defined()) return Tensor::empty(shape, dtype, device);
  MARLIN_CHECK(out.shape() == shape && out.dtype() == dtype && out.device() == device, op,
               "out must be ", dtype_name(dtype), shape_str(shape), " ", device.str(), ", got ",
               out.describe());
  check_rows(op, "out", out);
  return out;
}

void check_norm_weight(const char* op, const Tensor& x, const Tensor& weight, double eps) {
  MARLIN_CHECK(weight.defined() && weight.dim() == 1 && weight.size(0) == x.size(-1), op,
               "weight must be [N] = [", x.size(-1), "] for x ", x.describe(), ", got ", describe(weight));
  MARLIN_CHECK(is_activation_dtype(weight.dtype()) && weight.is_contiguous(), op,
               "weight must be contiguous f32, f16 or bf16, got ", weight.describe());
  check_same_device(op, x, "x", weight, "weight");
  MARLIN_CHECK(eps >= 0.0, op, "eps must be non-negative, got ", eps);
}

#ifndef MARLIN_WITH_CUDA
[[noreturn]] void no_cuda(const char* op, Device device) {
  fail(op, "tensors are on ", device.str(), " but this build has no CUDA backend");
}
#endif

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& out) {
  constexpr const char* op = "rms_norm";
  check_rows(op, "x", x);
  check_norm_weight(op, x, weight, eps);
  Tensor y = output(op, out, x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::rms_norm(x, weight, static_cast<float>(eps), y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::rms_norm(x, weight, static_cast<float>(eps), y);
  return y;
#else
  no_cuda(op, x.device());
#endif
}

Tensor add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                    const Tensor& out) {
  constexpr const char* op = "add_rms_norm";
  check_rows(op, "x", x);
  check_rows(op, "residual", residual);
  MARLIN_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype(), op,
               "residual and x must have one shape and dtype, got residual ", residual.describe(),
               " and x ", x.describe());
  check_same_device(op, residual, "residual", x, "x");
  check_norm_weight(op, x, weight, eps);
  Tensor y = output(op, out, x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::add_rms_norm(residual, x, weight, static_cast<float>(eps), y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::add_rms_norm(residual, x, weight, static_cast<float>(eps), y);
  return y;
#else
  no_cuda(op, x.device());
#endif
}

void rope(const Tensor& x, const Tensor& positions, const RopeParams& params) {
  rope(x, Tensor(), positions, params);
}

void check_rope(const char* op, const Tensor& q, const Tensor& k, const Tensor& positions,
                const RopeParams& params) {
  const Tensor& inv = params.inv_freq;
  MARLIN_CHECK(inv.defined() && inv.dim() == 1 && inv.dtype() == DType::f32 && inv.is_contiguous() &&
                   inv.numel() >= 1,
               op, "params.inv_freq must be f32 [rotary_dim / 2], got ", describe(inv));
  MARLIN_CHECK(positions.defined() && positions.dim() == 1 && positions.dtype() == DType::i32 &&
                   positions.is_contiguous(),
               op, "positions must be contiguous i32 [tokens], got ", describe(positions));
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}}) {
    if (name[0] == 'k' && !t->defined()) continue;
    MARLIN_CHECK(t->defined() && t->dim() == 3, op, name, " must be [tokens, heads, head_dim], got ",
                 describe(*t));
    MARLIN_CHECK(is_activation_dtype(t->dtype()), op, name, " must be f32, f16 or bf16, got ", t->describe());
    MARLIN_CHECK(t->strides()[2] == 1 || t->size(2) == 1, op, name, " must have a contiguous head_dim, got ",
                 t->describe(), " with strides ", t->strides());
    MARLIN_CHECK(params.rotary_dim() <= t->size(2), op, "rotary_dim=", params.rotary_dim(),
                 " exceeds the head_dim of ", name, " ", t->describe());
    MARLIN_CHECK(t->size(0) == positions.numel(), op, name, " has ", t->size(0), " tokens but positions ",
                 describe(positions), " has ", positions.numel());
    check_same_device(op, *t, name, inv, "params.inv_freq (RopeParams::to moves it)");
    check_same_device(op, *t, name, positions, "positions");
  }
  if (k.defined())
    MARLIN_CHECK(k.dtype() == q.dtype(), op, "q and k must have one dtype, got q ", q.describe(), " and k ",
                 k.describe());
}

void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const RopeParams& params) {
  constexpr const char* op = "rope";
  check_rope(op, q, k, positions, params);
  const Tensor& inv = params.inv_freq;
  const bool interleaved = params.layout == RopeLayout::interleaved;
  if (q.device().is_cpu()) {
    cpu::rope(q, k, positions, inv, interleaved, params.attention_factor);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::rope(q, k, positions, inv, interleaved, params.attention_factor);
#else
  no_cuda(op, q.device());
#endif
}

Tensor silu_mul(const Tensor& gate_up) {
  constexpr const char* op = "silu_mul";
  check_rows(op, "gate_up", gate_up);
  MARLIN_CHECK(gate_up.size(-1) % 2 == 0, op, "gate_up [..., 2I] must have an even last dim, got ",
               gate_up.describe());
  const int64_t inter = gate_up.size(-1) / 2;
  const int64_t last = gate_up.dim() - 1;
  return silu_mul(gate_up.narrow(last, 0, inter), gate_up.narrow(last, inter, inter));
}

Tensor silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  constexpr const char* op = "silu_mul";
  check_rows(op, "gate", gate);
  check_rows(op, "up", up);
  MARLIN_CHECK(gate.shape() == up.shape() && gate.dtype() == up.dtype(), op,
               "gate and up must have one shape and dtype, got gate ", gate.describe(), " and up ",
               up.describe());
  check_same_device(op, gate, "gate", up, "up");
  Tensor y = output(op, out, gate.shape(), gate.dtype(), gate.device());
  if (gate.device().is_cpu()) {
    cpu::silu_mul(gate, up, y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::silu_mul(gate, up, y);
  return y;
#else
  no_cuda(op, gate.device());
#endif
}

Tensor embedding(const Tensor& ids, const Tensor& table, const Tensor& out) {
  constexpr const char* op = "embedding";
  MARLIN_CHECK(ids.defined() && ids.dim() == 1 && ids.dtype() == DType::i32 && ids.is_contiguous(), op,
               "ids must be contiguous i32 [tokens], got ", describe(ids));
  MARLIN_CHECK(table.defined() && table.dim() == 2 && table.is_contiguous(), op,
               "table must be contiguous [V, H], got ", describe(table));
  MARLIN_CHECK(is_activation_dtype(table.dtype()), op, "table must be f32, f16 or bf16, got ",
               table.describe());
  const int64_t vocab = table.size(0);
  Tensor y = output(op, out, {ids.size(0), table.size(1)}, table.dtype(), table.device());
  MARLIN_CHECK(y.is_contiguous(), op, "out must be contiguous, got ", y.describe());
  Tensor dev_ids = ids;
  if (ids.device().is_cpu()) {  // checked here, where it costs nothing
    const int32_t* id = ids.data<int32_t>();
    for (int64_t t = 0; t < ids.numel(); ++t)
      MARLIN_CHECK(id[t] >= 0 && id[t] < vocab, op, "id ", id[t], " at position ", t,
                   " is outside the table's vocabulary [0, V=", vocab, ")");
    dev_ids = ids.to(table.device());
  } else {
    check_same_device(op, ids, "ids", table, "table");
  }
  if (table.device().is_cpu()) {
    cpu::embedding(dev_ids, table, y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  const int64_t bad = cuda::embedding(dev_ids, table, y, /*check=*/!ids.device().is_cpu());
  if (bad >= 0) {
    const int32_t id = static_cast<int32_t>(dev_ids.narrow(0, bad, 1).to(Device::cpu()).data<int32_t>()[0]);
    fail(op, "id ", id, " at position ", bad, " is outside the table's vocabulary [0, V=", vocab, ")");
  }
  return y;
#else
  no_cuda(op, table.device());
#endif
}

Tensor add(const Tensor& a, const Tensor& b, const Tensor& out) {
  constexpr const char* op = "add";
  MARLIN_CHECK(a.defined() && b.defined() && a.shape() == b.shape() && a.dtype() == b.dtype(), op,
               "a and b must have one shape and dtype, got a ", describe(a), " and b ", describe(b));
  MARLIN_CHECK(is_activation_dtype(a.dtype()), op, "a must be f32, f16 or bf16, got ", a.describe());
  MARLIN_CHECK(a.is_contiguous() && b.is_contiguous(), op, "a and b must be contiguous, got a ",
               a.describe(), " and b ", b.describe());
  check_same_device(op, a, "a", b, "b");
  Tensor y = output(op, out, a.shape(), a.dtype(), a.device());
  MARLIN_CHECK(y.is_contiguous(), op, "out must be contiguous, got ", y.describe());
  if (a.device().is_cpu()) {
    cpu::add(a, b, y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::add(a, b, y);
  return y;
#else
  no_cuda(op, a.device());
#endif
}

Tensor softmax_last_dim(const Tensor& x, const Tensor& out) {
  constexpr const char* op = "softmax_last_dim";
  check_rows(op, "x", x);
  Tensor y = output(op, out, x.shape(), DType::f32, x.device());
  if (x.device().is_cpu()) {
    cpu::softmax_last_dim(x, y);
    return y;
  }
#ifdef MARLIN_WITH_CUDA
  cuda::softmax_last_dim(x, y);
  return y;
#else
  no_cuda(op, x.device());
#endif
}

Tensor cast(const Tensor& x, DType dtype) {
  constexpr const char* op = "cast";
  MARLIN_CHECK(x.defined() && is_activation_dtype(x.dtype()), op, "x must be f32, f16 or bf16, got ",
               describe(x));
  MARLIN_CHECK(is_activation_dtype(dtype), op, "the target dtype must be f32, f16 or bf16, got ",
               dtype_name(dtype));
  if (x.device().is_cpu()) return x.to(dtype).contiguous();
  if (dtype == x.dtype()) return x.contiguous();
#ifdef MARLIN_WITH_CUDA
  const Tensor src = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), dtype, x.device());
  cuda::cast(src, y);
  return y;
#else
  no_cuda(op, x.device());
#endif
}

}  // namespace marlin::ops
