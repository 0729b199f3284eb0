// Rotary inverse frequencies from a model's config, step by step in f32 as Transformers' rope
// init functions compute them (modeling_rope_utils.py), so that cos/sin match its run: every
// torch op rounds to f32, `scalar / tensor` is reciprocal(tensor) * scalar, and Python scalars
// meet f32 tensors as f32.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "marlin/model_config.h"
#include "marlin/ops_nn.h"

namespace marlin::ops {
namespace {

constexpr const char* kOp = "rope_params";

// base ** (arange(0, dim, 2).float() / dim): the f32 power, correctly rounded via double.
std::vector<float> powers(double theta, int64_t dim) {
  const float base = static_cast<float>(theta);
  std::vector<float> p(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    p[static_cast<size_t>(i)] = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(e)));
  }
  return p;
}

// Rounds to f32 as a separate torch op would: keeps the compiler from fusing a product into the
// next sum (an FMA rounds once), which would move an inverse frequency by an ulp and the angle
// at position 131071 by up to 1e-2 rad.
float op_f32(float v) {
  volatile float stored = v;
  return stored;
}

// 0.1 * mscale * ln(scale) + 1 for scale > 1 (yarn's magnitude correction).
double yarn_mscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

void llama3(const RopeScaling& s, std::vector<float>& inv) {
  const float factor = static_cast<float>(s.factor);
  const double old_ctx = static_cast<double>(*s.original_max_position_embeddings);
  const float low_wavelen = static_cast<float>(old_ctx / s.low_freq_factor);
  const float high_wavelen = static_cast<float>(old_ctx / s.high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;
    const float scaled = wavelen > low_wavelen ? f / factor : f;
    if (wavelen < high_wavelen || wavelen > low_wavelen) {
      f = scaled;
      continue;
    }
    const float ratio = op_f32((1.0f / wavelen) * static_cast<float>(old_ctx));
    const float smooth = (ratio - static_cast<float>(s.low_freq_factor)) /
                         static_cast<float>(s.high_freq_factor - s.low_freq_factor);
    const float a = op_f32((1.0f - smooth) * scaled) / factor;
    const float b = op_f32(smooth * scaled);
    f = a + b;
  }
}

// Returns the attention factor.
double yarn(const RopeScaling& s, double theta, int64_t dim, int64_t max_positions,
            std::vector<float>& inv) {
  const int64_t original = s.original_max_position_embeddings.value_or(max_positions);
  MARLIN_CHECK(original > 0, kOp, "yarn needs original_max_position_embeddings or max_position_embeddings");
  const double factor = s.factor;
  double attention;
  if (s.attention_factor) attention = *s.attention_factor;
  else if (s.mscale.value_or(0.0) != 0.0 && s.mscale_all_dim.value_or(0.0) != 0.0)
    attention = yarn_mscale(factor, *s.mscale) / yarn_mscale(factor, *s.mscale_all_dim);
  else attention = yarn_mscale(factor);

  const double beta_fast = s.beta_fast != 0.0 ? s.beta_fast : 32.0;  // Python's `or 32`
  const double beta_slow = s.beta_slow != 0.0 ? s.beta_slow : 1.0;
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(static_cast<double>(original) / (rotations * 2 * std::numbers::pi))) /
           (2 * std::log(theta));
  };
  // truncate (Transformers' default): whole dims.
  double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // no division by zero

  const std::vector<float> pos = powers(theta, dim);
  const float factor_f = static_cast<float>(factor), low_f = static_cast<float>(low);
  const float span = static_cast<float>(high - low);
  for (size_t i = 0; i < inv.size(); ++i) {
    const float extrapolation = 1.0f / pos[i];
    const float interpolation = 1.0f / (factor_f * pos[i]);
    const float ramp = std::clamp((static_cast<float>(i) - low_f) / span, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    const float a = op_f32(interpolation * (1.0f - extrapolation_factor));
    const float b = op_f32(extrapolation * extrapolation_factor);
    inv[i] = a + b;
  }
  return attention;
}

}  // namespace

RopeParams rope_params(double rope_theta, int64_t rotary_dim, const RopeScaling& scaling,
                       int64_t max_position_embeddings, RopeLayout layout,
                       bool deepseek_softmax_mscale) {
  MARLIN_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, kOp, "rotary_dim must be even and positive, got ",
               rotary_dim);
  MARLIN_CHECK(rope_theta > 1.0 && std::isfinite(rope_theta), kOp, "rope_theta must exceed 1, got ", rope_theta);
  MARLIN_CHECK(scaling.factor > 0.0, kOp, "rope scaling factor must be positive, got ", scaling.factor);
  std::vector<float> inv = powers(rope_theta, rotary_dim);
  for (float& f : inv) f = 1.0f / f;
  RopeParams p;
  p.layout = layout;
  switch (scaling.type) {
    case RopeType::default_rope: break;
    case RopeType::linear:
      for (float& f : inv) f /= static_cast<float>(scaling.factor);
      break;
    case RopeType::llama3:
      MARLIN_CHECK(scaling.original_max_position_embeddings.value_or(0) > 0, kOp,
                   "llama3 rope needs original_max_position_embeddings");
      MARLIN_CHECK(scaling.high_freq_factor > scaling.low_freq_factor, kOp,
                   "llama3 rope needs high_freq_factor > low_freq_factor, got ", scaling.high_freq_factor,
                   " and ", scaling.low_freq_factor);
      llama3(scaling, inv);
      break;
    case RopeType::yarn:
      p.attention_factor =
          static_cast<float>(yarn(scaling, rope_theta, rotary_dim, max_position_embeddings, inv));
      break;
  }
  // DeepSeek/GLM attention: scaling *= mscale(factor, mscale_all_dim)^2 for any scaled rope.
  if (deepseek_softmax_mscale && scaling.type != RopeType::default_rope &&
      scaling.mscale_all_dim.value_or(0.0) != 0.0) {
    const double m = yarn_mscale(scaling.factor, *scaling.mscale_all_dim);
    p.softmax_scale_factor = m * m;
  }
  p.inv_freq = Tensor::from_vector(inv, {rotary_dim / 2}, DType::f32);
  return p;
}

RopeParams rope_params(const ModelConfig& config) {
  return rope_params(config.rope_theta, config.rotary_dim, config.rope_scaling,
                     config.max_position_embeddings,
                     config.rope_interleave ? RopeLayout::interleaved : RopeLayout::half_split,
                     config.mla.has_value());
}

RopeParams RopeParams::to(Device device) const {
  RopeParams p = *this;
  if (inv_freq.defined()) p.inv_freq = inv_freq.to(device);
  return p;
}

}  // namespace marlin::ops
