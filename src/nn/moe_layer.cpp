// MoE: router (f32 logits), Transformers' routing, SwiGLU experts at per-expert bit widths and
// optional shared experts. The CPU path loops over the experts; CUDA uses the fused dispatch.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "core/cuda_check.h"  // fail_no_cuda in builds without CUDA
#include "kernels/cpu/cpu_kernels.h"
#include "marlin/moe.h"
#include "marlin/ops.h"
#include "nn/moe_plan.h"
#include "ops/moe_internal.h"

namespace marlin {
MLP make_expert(const Tensor& gate, const Tensor& up, const Tensor& down, int bits,
                int group_size, const LayerPlacement& placement, ScaleMethod scales) {
  return MLP(QuantizedLinear(gate, {}, bits, group_size, placement, scales),
             QuantizedLinear(up, {}, bits, group_size, placement, scales),
             QuantizedLinear(down, {}, bits, group_size, placement, scales));
}

MoE::MoE(const MoeRouting& routing, const Tensor& router_weight, std::vector<MLP> experts,
         MLP shared_experts, const Tensor& e_score_correction_bias,
         const LayerPlacement& placement)
    : routing_(routing),
      experts_(std::move(experts)),
      shared_(std::move(shared_experts)),
      placement_(placement) {
  constexpr const char* op = "MoE";
  ops::check_routing(op, routing);
  const int64_t E = routing.num_experts;
  MARLIN_CHECK(router_weight.defined() && router_weight.dim() == 2 &&
                   router_weight.size(0) == E && dtype_is_float(router_weight.dtype()),
               op, "router_weight must be a float [num_experts=", E, ", H], got ",
               router_weight.defined() ? router_weight.describe() : "an undefined tensor");
  hidden_size_ = router_weight.size(1);
  const int64_t H = hidden_size_;
  MARLIN_CHECK(static_cast<int64_t>(experts_.size()) == E, op, "got ", experts_.size(),
               " experts for num_experts=", E);
  auto check_mlp = [&](const MLP& m, const std::string& name) {
    MARLIN_CHECK(m.gate_proj().in_features() == H && m.down_proj().out_features() == H, op, name,
                 " maps ", m.gate_proj().in_features(), " -> ", m.down_proj().out_features(),
                 " features, the router ", H);
  };
  for (int64_t e = 0; e < E; ++e) check_mlp(experts_[static_cast<size_t>(e)], "expert " + std::to_string(e));
  if (has_shared_experts()) check_mlp(shared_, "shared_experts");
  router_weight_ = router_weight.contiguous().to(DType::f32).to(placement.device);
  if (e_score_correction_bias.defined()) {
    MARLIN_CHECK(e_score_correction_bias.numel() == E, op, "e_score_correction_bias must be [", E,
                 "], got ", e_score_correction_bias.describe());
    bias_ = e_score_correction_bias.contiguous().view({E}).to(DType::f32).to(placement.device);
  }
  if (placement.device.is_cpu()) {
    router_weight_t_ = router_weight_.transpose(0, 1).contiguous();  // [H, E] for cpu::gemm
  } else {
    pack_expert_storage();
    plan_ = make_moe_device_plan(*this);
  }
}

// The experts' (and shared experts') packed weights and scales moved into one allocation of
// each, slices 16-byte aligned: the caching allocator rounds every block of 1 MiB or more up to
// 2 MiB, which wasted a quarter of GLM-4.7-Flash's 1.5 MiB expert matrices. Their tile layouts
// (made for gemm_q) are dropped too: the expert kernels read the canonical layout, and the tile
// layout would hold every expert's weights a second time.
void MoE::pack_expert_storage() {
  const auto padded = [](int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; };
  int64_t words = 0, halves = 0;
  const LinearVisitor count = [&](const std::string&, const QuantizedLinear& l) {
    if (l.bits() == 16) return;
    words += padded(l.qweight().packed.numel(), 4);
    halves += padded(l.qweight().scales.numel(), 8);
  };
  for (const MLP& m : experts_) m.for_each_linear("", count);
  if (has_shared_experts()) shared_.for_each_linear("", count);
  if (words == 0) return;
  const Tensor all_words = Tensor::empty({words}, DType::u32, placement_.device);
  const Tensor all_scales = Tensor::empty({halves}, DType::f16, placement_.device);
  int64_t word = 0, half = 0;
  const LinearTransform move = [&](const std::string&, const QuantizedLinear& l) {
    if (l.bits() == 16) return l;
    const QuantizedWeight& q = l.qweight();
    Tensor packed = all_words.narrow(0, word, q.packed.numel()).view(q.packed.shape());
    Tensor scales = all_scales.narrow(0, half, q.scales.numel()).view(q.scales.shape());
    packed.copy_from(q.packed);
    scales.copy_from(q.scales);
    word += padded(q.packed.numel(), 4);
    half += padded(q.scales.numel(), 8);
    return l.with_weight_storage(packed, scales);
  };
  for (MLP& m : experts_) m.transform_linears("", move);
  if (has_shared_experts()) shared_.transform_linears("", move);
}

std::vector<int> MoE::expert_bits() const {
  std::vector<int> bits;
  for (const MLP& m : experts_) bits.push_back(m.gate_proj().bits());
  return bits;
}

Tensor MoE::router_logits(const Tensor& x) const {
  constexpr const char* op = "MoE::router_logits";
  MARLIN_CHECK(x.defined() && x.dim() == 2 && x.size(1) == hidden_size_ && x.is_contiguous(), op,
               "x must be contiguous [T, ", hidden_size_, "], got ",
               x.defined() ? x.describe() : "an undefined tensor");
  MARLIN_CHECK(x.device() == placement_.device, op, "x on ", x.device().str(), ", the layer on ",
               placement_.device.str());
  const int64_t T = x.size(0), E = routing_.num_experts;
  Tensor logits = Tensor::empty({T, E}, DType::f32, x.device());
  const bool round = routing_.logits_in_activation_dtype && x.dtype() != DType::f32;
  if (x.device().is_cpu()) {
    cpu::gemm(x, router_weight_t_, {}, logits);
    if (round) logits = logits.to(x.dtype()).to(DType::f32);
  } else {
#ifdef MARLIN_WITH_CUDA
    cuda::moe_router(x, router_weight_, round, logits, {}, {}, {}, {});
#else
    fail_no_cuda(op);
#endif
  }
  return logits;
}

ops::MoeRoute MoE::route(const Tensor& x) const {
  return ops::moe_route(router_logits(x), routing_, bias_);
}

Tensor MoE::forward(const Tensor& x) const {
  constexpr const char* op = "MoE::forward";
  MARLIN_CHECK(hidden_size_ > 0, op, "the layer has no weights");
  MARLIN_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == hidden_size_, op, "x must be [..., ",
               hidden_size_, "], got ", x.defined() ? x.describe() : "an undefined tensor");
  MARLIN_CHECK(x.dtype() == placement_.dtype && x.device() == placement_.device, op, "x is ",
               x.describe(), " but the layer computes in ", dtype_name(placement_.dtype), " on ",
               placement_.device.str());
  const Tensor x2d = x.contiguous().view({-1, hidden_size_});
  Tensor out;
  if (plan_) {
    out = x2d.size(0) == 1 ? moe_decode_on_current_stream(x2d, *this)
                           : moe_grouped_on_current_stream(x2d, *this);
  } else {
    out = forward_experts_loop(x2d, route(x2d));
  }
  return out.view(x.shape());
}

Tensor MoE::forward_add_norm(const Tensor& hidden, const Tensor& x, const RMSNorm& norm) const {
  if (plan_) {
    const Tensor out = moe_decode_add_norm_on_current_stream(hidden, x, norm, *this);
    if (out.defined()) return out;
  }
  return forward(ops::add_rms_norm(hidden, x, norm.weight(), norm.eps()));
}

// Transformers' loop: for each expert in id order, its tokens' outputs times their weights are
// added to the result (in the activation dtype), then the shared experts' output.
Tensor MoE::forward_experts_loop(const Tensor& x2d, const ops::MoeRoute& r) const {
  const int64_t T = x2d.size(0), H = hidden_size_, k = routing_.top_k;
  const Tensor ids = r.ids.to(Device::cpu()), weights = r.weights.to(Device::cpu());
  const Tensor x_host = x2d.to(Device::cpu());
  const DType dtype = x2d.dtype();
  auto round = [dtype](float v) {
    return dtype == DType::f32    ? v
           : dtype == DType::bf16 ? bf16_bits_to_float(float_to_bf16_bits(v))
                                  : half_bits_to_float(float_to_half_bits(v));
  };
  std::vector<float> acc(static_cast<size_t>(T * H), 0.0f);
  const std::vector<float> xs = x_host.to_float_vector();
  for (int64_t e = 0; e < routing_.num_experts; ++e) {
    std::vector<int64_t> tokens;
    std::vector<float> token_weights;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j)
        if (ids.data<int32_t>()[t * k + j] == e) {
          tokens.push_back(t);
          token_weights.push_back(weights.data<float>()[t * k + j]);
        }
    if (tokens.empty()) continue;
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<float> rows(static_cast<size_t>(n * H));
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(xs.begin() + tokens[static_cast<size_t>(i)] * H, H, rows.begin() + i * H);
    const Tensor xe = Tensor::from_vector(rows, {n, H}, DType::f32).to(dtype).to(x2d.device());
    const std::vector<float> y = experts_[static_cast<size_t>(e)].forward(xe).to_float_vector();
    for (int64_t i = 0; i < n; ++i) {
      float* dst = acc.data() + tokens[static_cast<size_t>(i)] * H;
      const float w = token_weights[static_cast<size_t>(i)];
      for (int64_t h = 0; h < H; ++h) dst[h] = round(dst[h] + round(y[static_cast<size_t>(i * H + h)] * w));
    }
  }
  Tensor out = Tensor::from_vector(acc, {T, H}, DType::f32).to(dtype).to(x2d.device());
  if (has_shared_experts()) out = ops::add(out, shared_.forward(x2d));
  return out;
}

std::vector<int64_t> count_expert_usage(const MoE& moe, const Tensor& x) {
  const Tensor x2d = x.contiguous().view({-1, moe.hidden_size()});
  const Tensor ids = moe.route(x2d).ids.to(Device::cpu());
  std::vector<int64_t> counts(static_cast<size_t>(moe.num_experts()), 0);
  for (int64_t i = 0; i < ids.numel(); ++i) ++counts[static_cast<size_t>(ids.data<int32_t>()[i])];
  return counts;
}

std::vector<int> expert_bits_by_usage(const std::vector<int64_t>& usage_counts, int bits,
                                      double cold_fraction, int cold_bits) {
  constexpr const char* op = "expert_bits_by_usage";
  MARLIN_CHECK(cold_fraction >= 0.0 && cold_fraction <= 1.0, op,
               "cold_fraction must be in [0, 1], got ", cold_fraction);
  for (int b : {bits, cold_bits})
    MARLIN_CHECK(b == 16 || b == 8 || b == 4 || b == 2, op, "bits must be 16, 8, 4 or 2, got ", b);
  const size_t E = usage_counts.size();
  std::vector<size_t> order(E);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return usage_counts[a] != usage_counts[b] ? usage_counts[a] < usage_counts[b] : a > b;
  });
  const size_t cold = static_cast<size_t>(std::ceil(cold_fraction * static_cast<double>(E)));
  std::vector<int> out(E, bits);
  for (size_t i = 0; i < cold && i < E; ++i) out[order[i]] = cold_bits;
  return out;
}

}  // namespace marlin
