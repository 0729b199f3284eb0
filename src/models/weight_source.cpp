// CheckpointWeights and SyntheticWeights: the two places a model's tensors come from.
#include "models/weight_source.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "marlin/ops.h"

namespace marlin {
namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// FNV-1a: a tensor's random stream depends on its name, not on the order models ask for it.
uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (const char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

}  // namespace

Tensor CheckpointWeights::get(const std::string& name, const Shape& shape) const {
  MARLIN_CHECK(checkpoint_.has(name), "load_model", "tensor ", name, " is missing from ",
               checkpoint_.source());
  const SafetensorsTensorInfo& info = checkpoint_.info(name);
  MARLIN_CHECK(info.shape == shape, "load_model", "tensor ", name, " in ",
               checkpoint_.file_of(name).path(), " has shape ", shape_str(info.shape),
               ", expected ", shape_str(shape));
  MARLIN_CHECK(dtype_is_float(info.dtype) && info.dtype != DType::fp8_e4m3, "load_model",
               "tensor ", name, " in ", checkpoint_.file_of(name).path(), " is ",
               dtype_name(info.dtype), ", expected f32, f16 or bf16");
  return checkpoint_.tensor(name);
}

Tensor CheckpointWeights::get_exact(const std::string& name, DType dtype, const Shape& shape,
                                    std::string_view op) const {
  MARLIN_CHECK(checkpoint_.has(name), op, "tensor ", name, " is missing from ", checkpoint_.source());
  const SafetensorsTensorInfo& info = checkpoint_.info(name);
  const std::string& file = checkpoint_.file_of(name).path();
  MARLIN_CHECK(info.dtype == dtype, op, "tensor ", name, " in ", file, " is ",
               dtype_name(info.dtype), ", expected ", dtype_name(dtype));
  MARLIN_CHECK(info.shape == shape, op, "tensor ", name, " in ", file, " has shape ",
               shape_str(info.shape), ", expected ", shape_str(shape));
  return checkpoint_.tensor(name);
}

SyntheticWeights::SyntheticWeights(const ModelConfig& config, Device device, DType dtype,
                                   uint64_t seed)
    : device_(device), dtype_(dtype), seed_(seed) {
  MARLIN_CHECK(dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16,
               "SyntheticWeights", "dtype must be f32, f16 or bf16, got ", dtype_name(dtype));
  if (config.raw && config.raw->contains("initializer_range") &&
      config.raw->at("initializer_range").is_number())
    stddev_ = config.raw->at("initializer_range").get<float>();
  MARLIN_CHECK(stddev_ > 0, "SyntheticWeights", "initializer_range in ", config.source,
               " must be positive, got ", stddev_);
  source_ = "synthetic weights (seed " + std::to_string(seed) + ") for " + config.source;
}

bool SyntheticWeights::has(const std::string& name) const {
  // MoE layers load per-expert tensors as the Hub checkpoints hold them (each a transposed
  // view QuantizedLinear quantizes in place), not Transformers 5's fused [E, 2I, H] copy, which
  // would add a whole layer of 16-bit experts to the load's peak.
  return !ends_with(name, ".weight_packed") && !ends_with(name, ".weight_scale") &&
         !ends_with(name, ".experts.gate_up_proj") && !ends_with(name, ".experts.down_proj");
}

Tensor SyntheticWeights::get(const std::string& name, const Shape& shape) const {
  MARLIN_CHECK(has(name), "load_model", "tensor ", name, " is not held by ", source_);
  if (ends_with(name, "norm.weight")) {
    const std::vector<float> ones(static_cast<size_t>(shape_numel(shape)), 1.0f);
    return Tensor::from_vector(ones, shape, DType::f32).to(dtype_).to(device_);
  }
  if (ends_with(name, "bias")) return Tensor::zeros(shape, dtype_, device_);
  const uint64_t seed = seed_ ^ name_hash(name);
  // A linear's [out, in] as a view of [in, out]: the layout QuantizedLinear quantizes in place.
  // Embedding tables stay row-major, as lookups read them.
  if (shape.size() == 2 && !ends_with(name, "embed_tokens.weight"))
    return ops::random_normal({shape[1], shape[0]}, dtype_, device_, seed, stddev_).transpose(0, 1);
  return ops::random_normal(shape, dtype_, device_, seed, stddev_);
}

Tensor SyntheticWeights::get_exact(const std::string& name, DType dtype, const Shape& shape,
                                   std::string_view op) const {
  fail(op, "tensor ", name, " (", dtype_name(dtype), " ", shape_str(shape), ") is not held by ",
       source_, ": it makes float weights only");
}

}  // namespace marlin
