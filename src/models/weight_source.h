// Where a model's tensors come from: a safetensors checkpoint, or synthetic random weights with
// the real shapes made on the target device (benchmarks of models no one can download here).
// Models read every tensor through this interface, so both load the same way.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "marlin/model_config.h"
#include "marlin/safetensors.h"
#include "marlin/tensor.h"

namespace marlin {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // A float tensor (f32, f16 or bf16) of exactly `shape`; a missing tensor, another shape or
  // dtype is an error ("[load_model] ...") naming the tensor and where it was looked for.
  virtual Tensor get(const std::string& name, const Shape& shape) const = 0;
  // A tensor of exactly `dtype` and `shape` (packed weights, scales); errors name `op`.
  virtual Tensor get_exact(const std::string& name, DType dtype, const Shape& shape,
                           std::string_view op) const = 0;
  // The checkpoint file or index, or a description of the synthetic source, for errors.
  virtual const std::string& source() const = 0;

  Tensor get_if(bool wanted, const std::string& name, const Shape& shape) const {
    return wanted ? get(name, shape) : Tensor();
  }
};

// The tensors of a safetensors checkpoint (CPU tensors viewing the mapped file).
class CheckpointWeights final : public WeightSource {
 public:
  explicit CheckpointWeights(SafetensorsCheckpoint checkpoint) : checkpoint_(std::move(checkpoint)) {}
  bool has(const std::string& name) const override { return checkpoint_.has(name); }
  Tensor get(const std::string& name, const Shape& shape) const override;
  Tensor get_exact(const std::string& name, DType dtype, const Shape& shape,
                   std::string_view op) const override;
  const std::string& source() const override { return checkpoint_.source(); }

 private:
  SafetensorsCheckpoint checkpoint_;
};

// Random weights for the tensors a model asks for, made on demand on `device` in `dtype` with
// ops::random_normal (an 8B model in seconds on a GPU, never touching the host): N(0, std^2)
// with std = the config's initializer_range (default 0.02), RMSNorm weights ("...norm.weight")
// 1, biases 0, as Transformers initializes them. Each tensor's values depend only on `seed` and
// its name. Linear weights [out, in] are transposed views of contiguous [in, out] tensors, the
// layout the GEMMs take, so QuantizedLinear quantizes them where they lie without a copy. It
// holds float tensors only: has() is false for packed weights and scales, and for the fused
// expert tensors (MoE experts come one by one, as in the Hub checkpoints).
class SyntheticWeights final : public WeightSource {
 public:
  SyntheticWeights(const ModelConfig& config, Device device, DType dtype, uint64_t seed = 0);
  bool has(const std::string& name) const override;
  Tensor get(const std::string& name, const Shape& shape) const override;
  Tensor get_exact(const std::string& name, DType dtype, const Shape& shape,
                   std::string_view op) const override;
  const std::string& source() const override { return source_; }

  float stddev() const { return stddev_; }

 private:
  Device device_;
  DType dtype_;
  uint64_t seed_;
  float stddev_ = 0.02f;
  std::string source_;
};

}  // namespace marlin
