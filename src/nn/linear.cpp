// QuantizedLinear, Embedding and RMSNorm: weight conversion at construction, one op per call.
#include <climits>
#include <cstdint>
#include <vector>

#include "core/env.h"
#include "kernels/cpu/cpu_kernels.h"
#ifdef MARLIN_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif
#include "marlin/nn.h"
#include "marlin/ops.h"

namespace marlin {
namespace {

void check_placement(const char* op, const LayerPlacement& p) {
  MARLIN_CHECK(p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16, op,
               "activations must be f32, f16 or bf16, got ", dtype_name(p.dtype));
  // The CUDA GEMMs take f16/bf16 activations only.
  MARLIN_CHECK(p.dtype != DType::f32 || p.device.is_cpu(), op,
               "f32 activations run on the CPU only; use f16 or bf16 on ", p.device.str());
}

// A float tensor converted to `dtype` on `device`, contiguous.
Tensor place(const Tensor& t, DType dtype, Device device) {
  return t.contiguous().to(dtype).to(device);
}

}  // namespace

QuantizedLinear::QuantizedLinear(const Tensor& weight, const Tensor& bias, int bits,
                                 int group_size, const LayerPlacement& placement,
                                 ScaleMethod scales)
    : bits_(bits), group_size_(group_size), placement_(placement) {
  constexpr const char* op = "QuantizedLinear";
  check_placement(op, placement);
  MARLIN_CHECK(weight.defined() && weight.dim() == 2 && dtype_is_float(weight.dtype()), op,
               "weight must be a 2-D float tensor [out, in], got ",
               weight.defined() ? weight.describe() : "an undefined tensor");
  MARLIN_CHECK(bits == 16 || bits == 8 || bits == 4 || bits == 2, op, "bits must be 16, 8, 4 or 2, got ",
               bits);
  out_features_ = weight.size(0);
  in_features_ = weight.size(1);
  // HF stores [out, in]; the GEMMs take W [K = in, N = out]. A weight that is already a view of
  // a contiguous [K, N] on the placement's device (synthetic weights made there) is used where
  // it lies: a GPU quantizes it without a round trip through the host. Anything else (a
  // checkpoint's mapped tensor) is transposed on the host in f32.
  const Tensor view_kn = weight.transpose(0, 1);
  const bool in_place = view_kn.is_contiguous() && weight.device() == placement.device &&
                        (bits != 16 || weight.dtype() == placement.dtype);
  const Tensor w_kn = in_place ? view_kn
                               : weight.to(Device::cpu()).to(DType::f32).transpose(0, 1).contiguous();
  if (bits == 16) {
    weight_ = place(w_kn, placement.dtype, placement.device);
  } else {
    QuantizeOptions options;
    options.group_size = group_size;
    options.method = scales;
    qweight_ = ops::quantize(w_kn, format_from_bits(bits), options).to(placement.device);
    ops::prepare_for_gemm(qweight_);
  }
  if (bias.defined()) {
    MARLIN_CHECK(bias.dim() == 1 && bias.size(0) == out_features_, op, "bias must be [",
                 out_features_, "], got ", bias.describe());
    bias_ = place(bias, DType::f32, placement.device);
  }
}

QuantizedLinear QuantizedLinear::from_quantized(const QuantizedWeight& qweight, const Tensor& bias,
                                                const LayerPlacement& placement) {
  constexpr const char* op = "QuantizedLinear::from_quantized";
  check_placement(op, placement);
  check_quantized_layout(op, qweight.packed, qweight.scales, qweight.format, qweight.K, qweight.N,
                         qweight.group_size);
  QuantizedLinear layer;
  layer.bits_ = format_bits(qweight.format);
  layer.group_size_ = qweight.group_size;
  layer.placement_ = placement;
  layer.in_features_ = qweight.K;
  layer.out_features_ = qweight.N;
  QuantizedWeight q = qweight;
  q.tiled = Tensor();  // a tile layout is per device; made again below
  layer.qweight_ = q.to(placement.device);
  ops::prepare_for_gemm(layer.qweight_);
  if (bias.defined()) {
    MARLIN_CHECK(bias.dim() == 1 && bias.size(0) == qweight.N, op, "bias must be [", qweight.N,
                 "], got ", bias.describe());
    layer.bias_ = place(bias, DType::f32, placement.device);
  }
  return layer;
}

QuantizedLinear QuantizedLinear::with_weight_storage(const Tensor& packed, const Tensor& scales) const {
  constexpr const char* op = "QuantizedLinear::with_weight_storage";
  MARLIN_CHECK(bits_ != 16, op, "a 16-bit layer has no packed weights");
  const QuantizedWeight& q = qweight_;
  MARLIN_CHECK(packed.shape() == q.packed.shape() && packed.dtype() == q.packed.dtype() &&
                   packed.device() == q.packed.device() && packed.is_contiguous(),
               op, "packed must be like ", q.packed.describe(), ", got ", packed.describe());
  MARLIN_CHECK(scales.shape() == q.scales.shape() && scales.dtype() == q.scales.dtype() &&
                   scales.device() == q.scales.device() && scales.is_contiguous(),
               op, "scales must be like ", q.scales.describe(), ", got ", scales.describe());
  QuantizedLinear layer = *this;
  layer.qweight_.packed = packed;
  layer.qweight_.scales = scales;
  layer.qweight_.tiled = Tensor();
  return layer;
}

Tensor QuantizedLinear::forward(const Tensor& x) const {
  constexpr const char* op = "QuantizedLinear::forward";
  MARLIN_CHECK(in_features_ > 0, op, "the layer has no weights");
  MARLIN_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == in_features_, op, "x must be [..., ",
               in_features_, "], got ", x.defined() ? x.describe() : "an undefined tensor");
  MARLIN_CHECK(x.dtype() == placement_.dtype && x.device() == placement_.device, op, "x is ",
               x.describe(), " but the layer computes in ", dtype_name(placement_.dtype), " on ",
               placement_.device.str());
  Shape out_shape = x.shape();
  out_shape.back() = out_features_;
  const Tensor a = x.contiguous().view({-1, in_features_});
  Tensor y;
  if (x.dtype() == DType::f32) {
    // ops::gemm/gemm_q take 16-bit activations (the CUDA kernels' inputs); the CPU reference
    // kernels accumulate in f32 from any float A, which is what an fp32 run needs.
    y = Tensor::empty({a.size(0), out_features_}, DType::f32);
    if (bits_ == 16) {
      cpu::gemm(a, weight_, bias_, y);
    } else {
      cpu::gemm_q(a, qweight_, bias_, y);
    }
  } else {
    y = bits_ == 16 ? ops::gemm(a, weight_, bias_) : ops::gemm_q(a, qweight_, bias_);
  }
  return y.view(out_shape);
}

Tensor QuantizedLinear::forward_rms_normed(const Tensor& x, const RMSNorm& norm) const {
#ifdef MARLIN_WITH_CUDA
  // MARLIN_FUSE_NORM_GEMM=0 keeps the norm's own launch, to measure against.
  static const bool fuse = !env_is("MARLIN_FUSE_NORM_GEMM", "0");
  if (fuse && bits_ != 16 && in_features_ > 0 && x.defined() && x.device().is_cuda() && x.dim() >= 1 &&
      x.size(-1) == in_features_ && x.dtype() == placement_.dtype && x.device() == placement_.device &&
      norm.defined() && norm.weight().numel() == in_features_ && norm.weight().device() == x.device()) {
    Shape out_shape = x.shape();
    out_shape.back() = out_features_;
    const Tensor a = x.contiguous().view({-1, in_features_});
    Tensor y = Tensor::empty({a.size(0), out_features_}, x.dtype(), x.device());
    if (cuda::gemm_q_rms_normed(a, norm.weight(), static_cast<float>(norm.eps()), qweight_, bias_, y))
      return y.view(out_shape);
  }
#endif
  return forward(norm.forward(x));
}

Tensor QuantizedLinear::forward_silu_mul(const Tensor& gate, const Tensor& up) const {
#ifdef MARLIN_WITH_CUDA
  // One row: the views of a fused gate+up output (gate_up_proj) are contiguous as [1, in].
  if (bits_ != 16 && in_features_ > 0 && gate.defined() && up.defined() && gate.device().is_cuda() &&
      gate.dim() >= 1 && gate.size(-1) == in_features_ && gate.numel() == in_features_ && up.shape() == gate.shape() &&
      gate.dtype() == placement_.dtype && up.dtype() == gate.dtype() && gate.device() == placement_.device &&
      up.device() == gate.device() && gate.is_contiguous() && up.is_contiguous()) {
    Shape out_shape = gate.shape();
    out_shape.back() = out_features_;
    Tensor y = Tensor::empty({1, out_features_}, gate.dtype(), gate.device());
    if (cuda::gemm_q_silu_mul(gate.view({1, in_features_}), up.view({1, in_features_}), qweight_, bias_, y))
      return y.view(out_shape);
  }
#endif
  return forward(ops::silu_mul(gate, up));
}

Embedding::Embedding(const Tensor& table, const LayerPlacement& placement) {
  check_placement("Embedding", placement);
  MARLIN_CHECK(table.defined() && table.dim() == 2 && dtype_is_float(table.dtype()), "Embedding",
               "table must be a 2-D float tensor [V, H], got ",
               table.defined() ? table.describe() : "an undefined tensor");
  table_ = place(table, placement.dtype, placement.device);
}

Tensor Embedding::forward(const Tensor& ids) const {
  constexpr const char* op = "Embedding::forward";
  MARLIN_CHECK(ids.defined() && (ids.dtype() == DType::i32 || ids.dtype() == DType::i64), op,
               "ids must be i32 or i64, got ", ids.defined() ? ids.describe() : "an undefined tensor");
  Tensor flat = ids.contiguous().view({-1});
  if (flat.dtype() == DType::i64) {
    // ops::embedding takes i32 ids; ids past i32 are past any vocabulary, so keep them invalid.
    const Tensor host = flat.to(Device::cpu());
    std::vector<int32_t> narrow(static_cast<size_t>(host.numel()));
    const int64_t* src = host.data<int64_t>();
    for (size_t i = 0; i < narrow.size(); ++i)
      narrow[i] = src[i] < 0 || src[i] > INT32_MAX ? -1 : static_cast<int32_t>(src[i]);
    flat = Tensor::from_vector(narrow, {host.numel()}, DType::i32);
  }
  Shape out_shape = ids.shape();
  out_shape.push_back(table_.size(1));
  return ops::embedding(flat, table_).view(out_shape);
}

RMSNorm::RMSNorm(const Tensor& weight, double eps, const LayerPlacement& placement) : eps_(eps) {
  check_placement("RMSNorm", placement);
  MARLIN_CHECK(weight.defined() && weight.dim() == 1, "RMSNorm", "weight must be 1-D, got ",
               weight.defined() ? weight.describe() : "an undefined tensor");
  weight_ = place(weight, placement.dtype, placement.device);
}

}  // namespace marlin
