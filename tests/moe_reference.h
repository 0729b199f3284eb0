// Random MoE layers and the float64 reference of a whole MoE forward (shared by the CPU and CUDA
// tests): router logits and experts in float64 from the layer's own (dequantized) weights, the
// experts chosen by ops::moe_route on the CPU (itself checked against Transformers).
#pragma once

#include <cmath>
#include <vector>

#include "marlin/moe.h"
#include "test_util.h"

namespace marlin::testing {

struct RandomMoeSpec {
  int64_t hidden = 64, intermediate = 32, shared_intermediate = 0;
  MoeRouting routing;
  std::vector<int> expert_bits;  // one per expert
  int shared_bits = 4;
  int group_size = 32;
  bool with_bias = false;
  uint64_t seed = 1;
};

inline MoeRouting softmax_routing(int64_t E, int64_t k, bool norm) {
  MoeRouting r;
  r.num_experts = E;
  r.top_k = k;
  r.norm_topk_prob = norm;
  return r;
}

// DeepSeek-V3 / GLM style: sigmoid, noaux_tc groups, bias, renormalized and scaled.
inline MoeRouting sigmoid_group_routing(int64_t E, int64_t k, int64_t groups, int64_t topk_group) {
  MoeRouting r;
  r.num_experts = E;
  r.top_k = k;
  r.scoring = RouterScoring::sigmoid;
  r.method = TopkMethod::noaux_tc;
  r.n_group = groups;
  r.topk_group = topk_group;
  r.norm_topk_prob = true;
  r.norm_epsilon = 1e-20f;
  r.routed_scaling_factor = 2.5;
  return r;
}

inline MoE random_moe(const RandomMoeSpec& s, const LayerPlacement& placement) {
  const int64_t E = s.routing.num_experts, H = s.hidden, I = s.intermediate;
  uint64_t seed = s.seed * 1000;
  const float wstd = 1.0f / std::sqrt(static_cast<float>(H));
  std::vector<MLP> experts;
  for (int64_t e = 0; e < E; ++e, seed += 3) {
    experts.push_back(make_expert(random_tensor({I, H}, DType::f32, seed, wstd),
                                  random_tensor({I, H}, DType::f32, seed + 1, wstd),
                                  random_tensor({H, I}, DType::f32, seed + 2, 1.0f / std::sqrt(float(I))),
                                  s.expert_bits.at(static_cast<size_t>(e)), s.group_size, placement));
  }
  MLP shared;
  if (s.shared_intermediate > 0) {
    const int64_t Is = s.shared_intermediate;
    shared = make_expert(random_tensor({Is, H}, DType::f32, seed, wstd),
                         random_tensor({Is, H}, DType::f32, seed + 1, wstd),
                         random_tensor({H, Is}, DType::f32, seed + 2, 1.0f / std::sqrt(float(Is))),
                         s.shared_bits, s.group_size, placement);
    seed += 3;
  }
  const Tensor bias = s.with_bias ? random_tensor({E}, DType::f32, ++seed, 0.05f) : Tensor();
  return MoE(s.routing, random_tensor({E, H}, DType::f32, ++seed, 2.0f * wstd), std::move(experts),
             std::move(shared), bias, placement);
}

// W [K, N] of a layer as float64 (dequantized for 2/4/8 bits).
inline std::vector<double> dense_weight(const QuantizedLinear& l) {
  const Tensor w = l.bits() == 16 ? l.weight().to(Device::cpu()).to(DType::f32)
                                  : dequantize_cpu(l.qweight().to(Device::cpu()), DType::f32);
  return to_double(w);
}

// down(silu(gate(x)) * up(x)) for one row x [H] in float64.
inline std::vector<double> reference_mlp(const MLP& m, const std::vector<double>& x) {
  const int64_t H = m.gate_proj().in_features(), I = m.gate_proj().out_features();
  const std::vector<double> g = dense_weight(m.gate_proj()), u = dense_weight(m.up_proj()),
                            d = dense_weight(m.down_proj());
  std::vector<double> act(static_cast<size_t>(I)), out(static_cast<size_t>(H), 0.0);
  for (int64_t i = 0; i < I; ++i) {
    double gv = 0, uv = 0;
    for (int64_t h = 0; h < H; ++h) {
      gv += x[static_cast<size_t>(h)] * g[static_cast<size_t>(h * I + i)];
      uv += x[static_cast<size_t>(h)] * u[static_cast<size_t>(h * I + i)];
    }
    act[static_cast<size_t>(i)] = gv / (1.0 + std::exp(-gv)) * uv;
  }
  for (int64_t i = 0; i < I; ++i)
    for (int64_t h = 0; h < H; ++h)
      out[static_cast<size_t>(h)] += act[static_cast<size_t>(i)] * d[static_cast<size_t>(i * H + h)];
  return out;
}

// The whole MoE for x [T, H] (any dtype/device; its values are taken exactly) in float64.
inline std::vector<double> reference_moe(const MoE& moe, const Tensor& x) {
  const int64_t T = x.size(0), H = moe.hidden_size(), E = moe.num_experts();
  const MoeRouting& r = moe.routing();
  const std::vector<double> xs = to_double(x);
  const std::vector<double> wr = to_double(moe.router_weight());
  std::vector<float> logits(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double v = 0;
      for (int64_t h = 0; h < H; ++h) v += xs[static_cast<size_t>(t * H + h)] * wr[static_cast<size_t>(e * H + h)];
      logits[static_cast<size_t>(t * E + e)] = static_cast<float>(v);
    }
  Tensor lt = Tensor::from_vector(logits, {T, E}, DType::f32);
  if (r.logits_in_activation_dtype && x.dtype() != DType::f32) lt = lt.to(x.dtype()).to(DType::f32);
  const Tensor bias = moe.e_score_correction_bias().defined()
                          ? moe.e_score_correction_bias().to(Device::cpu())
                          : Tensor();
  const ops::MoeRoute route = ops::moe_route(lt, r, bias);
  const std::vector<float> w = route.weights.to_float_vector();
  const Tensor ids = route.ids.to(Device::cpu());
  std::vector<double> out(static_cast<size_t>(T * H), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> row(xs.begin() + t * H, xs.begin() + (t + 1) * H);
    std::vector<double> y(static_cast<size_t>(H), 0.0);
    for (int64_t j = 0; j < r.top_k; ++j) {
      const int32_t e = ids.data<int32_t>()[t * r.top_k + j];
      const std::vector<double> ye = reference_mlp(moe.experts()[static_cast<size_t>(e)], row);
      for (int64_t h = 0; h < H; ++h) y[static_cast<size_t>(h)] += w[static_cast<size_t>(t * r.top_k + j)] * ye[static_cast<size_t>(h)];
    }
    if (moe.has_shared_experts()) {
      const std::vector<double> ys = reference_mlp(moe.shared_experts(), row);
      for (int64_t h = 0; h < H; ++h) y[static_cast<size_t>(h)] += ys[static_cast<size_t>(h)];
    }
    std::copy(y.begin(), y.end(), out.begin() + t * H);
  }
  return out;
}

}  // namespace marlin::testing
