// dispatch_moe_decode / dispatch_moe_optimized (the original API's fused MoE entry points) and
// the per-layer device plan they run from.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/cuda_check.h"  // fail_no_cuda in builds without CUDA
#include "core/env.h"
#include "marlin/stream.h"
#include "nn/moe_plan.h"
#include "ops/moe_internal.h"

namespace marlin {
namespace {

#ifdef MARLIN_WITH_CUDA
cuda::MoeMatrix matrix_of(const QuantizedLinear& l) {
  const QuantizedWeight& q = l.qweight();
  cuda::MoeMatrix m;
  m.packed = q.packed.data<uint32_t>();
  m.scales = q.scales.data_ptr();
  m.bits = format_bits(q.format);
  m.group_size = q.group_size;
  m.K = static_cast<int32_t>(q.K);
  m.N = static_cast<int32_t>(q.N);
  return m;
}

bool aligned16(const cuda::MoeMatrix& m) {
  return m.N % 4 == 0 && reinterpret_cast<uintptr_t>(m.packed) % 16 == 0;
}

// The tensor-core decode loads 8 columns of words and of scales with 16-byte loads.
bool tensor_core_ready(const cuda::MoeMatrix& m) {
  return m.N % 8 == 0 && reinterpret_cast<uintptr_t>(m.packed) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(m.scales) % 16 == 0;
}
#endif

// Checks x and the plan; returns x as a contiguous [T, H].
Tensor check_dispatch(const char* op, const Tensor& x, const MoE& moe) {
  MARLIN_CHECK(moe.device_plan() != nullptr, op,
               "needs a MoE on a CUDA device whose experts are all quantized (2/4/8 bits)");
  MARLIN_CHECK(x.defined() && (x.dim() == 1 || x.dim() == 2) && x.size(-1) == moe.hidden_size(),
               op, "x must be [T, ", moe.hidden_size(), "], got ",
               x.defined() ? x.describe() : "an undefined tensor");
  MARLIN_CHECK(x.device() == moe.placement().device && x.dtype() == moe.placement().dtype, op,
               "x is ", x.describe(), " but the layer computes in ",
               dtype_name(moe.placement().dtype), " on ", moe.placement().device.str());
  return x.contiguous().view({-1, moe.hidden_size()});
}

}  // namespace

std::shared_ptr<const MoeDevicePlan> make_moe_device_plan(const MoE& moe) {
#ifdef MARLIN_WITH_CUDA
  if (!moe.placement().device.is_cuda()) return nullptr;
  for (int bits : moe.expert_bits())
    if (bits == 16) return nullptr;
  const bool shared = moe.has_shared_experts();
  if (shared && moe.shared_experts().gate_proj().bits() == 16) return nullptr;
  auto plan = std::make_shared<MoeDevicePlan>();
  std::vector<cuda::MoeExpertMatrices> table;
  auto add = [&](const MLP& m) {
    for (QuantizedLinear l : {m.gate_proj(), m.up_proj(), m.down_proj()}) plan->weights.push_back(l);
    const size_t n = plan->weights.size();
    table.push_back({matrix_of(plan->weights[n - 3]), matrix_of(plan->weights[n - 2]),
                     matrix_of(plan->weights[n - 1])});
  };
  plan->weights.reserve(3 * (moe.experts().size() + 1));
  for (const MLP& m : moe.experts()) add(m);
  if (shared) add(moe.shared_experts());
  cuda::MoeKernelPlan& k = plan->kernel;
  k.num_experts = static_cast<int>(moe.num_experts());
  k.has_shared = shared;
  k.hidden = static_cast<int>(moe.hidden_size());
  k.vector4 = true;
  k.tensor_cores = true;
  for (const auto& e : table) {
    MARLIN_CHECK(e.gate.bits == e.up.bits && e.gate.group_size == e.up.group_size, "MoE",
                 "an expert's gate and up projections must share bits and group size");
    k.max_intermediate = std::max(k.max_intermediate, e.gate.N);
    k.vector4 = k.vector4 && aligned16(e.gate) && aligned16(e.up) && aligned16(e.down);
    k.tensor_cores = k.tensor_cores && tensor_core_ready(e.gate) && tensor_core_ready(e.up) && tensor_core_ready(e.down);
  }
  const size_t bytes = table.size() * sizeof(cuda::MoeExpertMatrices);
  Tensor host = Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8);
  std::memcpy(host.data_ptr(), table.data(), bytes);
  k.table = host.to(moe.placement().device);
  return plan;
#else
  (void)moe;
  return nullptr;
#endif
}

Tensor moe_decode_on_current_stream(const Tensor& x, const MoE& moe) {
  constexpr const char* op = "dispatch_moe_decode";
  const Tensor x2d = check_dispatch(op, x, moe);
  MARLIN_CHECK(x2d.size(0) == 1, op, "takes one token, got ", x.describe(),
               " (dispatch_moe_optimized takes many)");
#ifdef MARLIN_WITH_CUDA
  const Device device = x2d.device();
  const MoeRouting& r = moe.routing();
  const Tensor logits = Tensor::empty({1, r.num_experts}, DType::f32, device);
  const Tensor ids = Tensor::empty({1, r.top_k}, DType::i32, device);
  const Tensor weights = Tensor::empty({1, r.top_k}, DType::f32, device);
  const bool round = r.logits_in_activation_dtype;
  cuda::moe_router(x2d, moe.router_weight(), round, logits, moe.e_score_correction_bias(),
                   ops::route_params(r, moe.e_score_correction_bias().defined()), ids, weights);
  const Tensor out = Tensor::empty({1, moe.hidden_size()}, x2d.dtype(), device);
  cuda::moe_decode_experts(x2d, ids, weights, moe.device_plan()->kernel, out);
  return x.dim() == 1 ? out.view({moe.hidden_size()}) : out;
#else
  fail_no_cuda(op);
#endif
}

Tensor moe_grouped_on_current_stream(const Tensor& x, const MoE& moe) {
  constexpr const char* op = "dispatch_moe_optimized";
  const Tensor x2d = check_dispatch(op, x, moe);
#ifdef MARLIN_WITH_CUDA
  const Device device = x2d.device();
  const MoeRouting& r = moe.routing();
  const int64_t T = x2d.size(0);
  const Tensor logits = Tensor::empty({T, r.num_experts}, DType::f32, device);
  const Tensor ids = Tensor::empty({T, r.top_k}, DType::i32, device);
  const Tensor weights = Tensor::empty({T, r.top_k}, DType::f32, device);
  cuda::moe_router(x2d, moe.router_weight(), r.logits_in_activation_dtype, logits,
                   moe.e_score_correction_bias(),
                   ops::route_params(r, moe.e_score_correction_bias().defined()), ids, weights);
  const Tensor out = Tensor::empty({T, moe.hidden_size()}, x2d.dtype(), device);
  // A few tokens (a batch of decode steps): each through the decode kernels, in one launch pair.
  if (cuda::moe_decode_takes(moe.device_plan()->kernel, T))
    cuda::moe_decode_experts(x2d, ids, weights, moe.device_plan()->kernel, out);
  else
    cuda::moe_grouped_experts(x2d, ids, weights, moe.device_plan()->kernel, out);
  return x.dim() == 1 ? out.view({moe.hidden_size()}) : out;
#else
  fail_no_cuda(op);
#endif
}

Tensor moe_decode_add_norm_on_current_stream(const Tensor& hidden, const Tensor& x, const RMSNorm& norm,
                                             const MoE& moe) {
#ifdef MARLIN_WITH_CUDA
  // MARLIN_FUSE_ROUTER_NORM=0 keeps add_rms_norm's own launch, to measure against.
  static const bool fuse = !env_is("MARLIN_FUSE_ROUTER_NORM", "0");
  const MoeDevicePlan* plan = moe.device_plan();
  const int64_t H = moe.hidden_size();
  if (!fuse || plan == nullptr || !x.defined() || !hidden.defined() || x.shape() != hidden.shape() ||
      x.size(-1) != H || !x.is_contiguous() || !hidden.is_contiguous() || x.device() != moe.placement().device ||
      hidden.device() != x.device() || x.dtype() != moe.placement().dtype || hidden.dtype() != x.dtype() ||
      !norm.defined() || norm.weight().numel() != H || norm.weight().device() != x.device() ||
      !cuda::moe_router_add_norm_fits(x, norm.weight()))
    return Tensor();
  const int64_t T = x.numel() / H;
  if (!cuda::moe_decode_takes(plan->kernel, T)) return Tensor();
  const Device device = x.device();
  const MoeRouting& r = moe.routing();
  const Tensor normed = Tensor::empty({T, H}, x.dtype(), device);
  const Tensor logits = Tensor::empty({T, r.num_experts}, DType::f32, device);
  const Tensor ids = Tensor::empty({T, r.top_k}, DType::i32, device);
  const Tensor weights = Tensor::empty({T, r.top_k}, DType::f32, device);
  // The kernels take rows: [B, T, H] activations as [B T, H].
  cuda::moe_router_add_norm(hidden.view({T, H}), x.view({T, H}), norm.weight(), static_cast<float>(norm.eps()),
                            normed, moe.router_weight(),
                            r.logits_in_activation_dtype, logits, moe.e_score_correction_bias(),
                            ops::route_params(r, moe.e_score_correction_bias().defined()), ids, weights);
  const Tensor out = Tensor::empty({T, H}, x.dtype(), device);
  cuda::moe_decode_experts(normed, ids, weights, plan->kernel, out);
  return out.view(x.shape());
#else
  (void)hidden, (void)x, (void)norm, (void)moe;
  return Tensor();
#endif
}

// The original API's entry points run on the library's stream.
Tensor dispatch_moe_decode(KernelLibrary& lib, const Tensor& x, const MoE& moe) {
  StreamGuard guard(lib.stream(), x.defined() && lib.device() == x.device());
  return moe_decode_on_current_stream(x, moe);
}

Tensor dispatch_moe_optimized(KernelLibrary& lib, const Tensor& x, const MoE& moe) {
  StreamGuard guard(lib.stream(), x.defined() && lib.device() == x.device());
  return moe_grouped_on_current_stream(x, moe);
}

}  // namespace marlin
