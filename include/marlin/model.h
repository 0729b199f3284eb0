// Causal language models assembled from the nn layers, and the registry that loads one from a
// Hugging Face model directory (config.json + safetensors) by its config's model_type.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "marlin/kv_cache.h"
#include "marlin/model_config.h"
#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin {

struct ModelLoadOptions {
  Device device = Device::cpu();
  // Activations and 16-bit weights. Default: f32 on the CPU; on CUDA the checkpoint's f16 or
  // bf16, else bf16 (f32 runs on the CPU only).
  std::optional<DType> dtype;
  int bits = 16;  // 16 keeps the weights unquantized; 8, 4, 2: FP8 E4M3, FP4 E2M1, INT2
  int group_size = 128;
  // How quantized layers pick their per-group scales: round-to-nearest from the absmax, or the
  // clipping with the least squared error (slower to load, never a worse reconstruction).
  ScaleMethod scales = ScaleMethod::absmax;
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  // ids [T] or [B, T] (i32 or i64, any device) -> logits f32 [T, V] or [B, T, V], on the
  // model's device. Without a cache the tokens are one fresh sequence per row, at positions
  // 0..T-1. With one, they continue the cached sequences at position cache->seq_len(), and the
  // cache is advanced past them. Positions beyond the model's context are an error.
  virtual Tensor forward(const Tensor& ids, KVCache* cache = nullptr) const = 0;
  // A cache for this model's layers, dtype and device.
  virtual KVCache make_cache(int64_t max_seq_len, int64_t batch_size = 1) const = 0;
  virtual const ModelConfig& config() const = 0;
  virtual Device device() const = 0;
  virtual DType dtype() const = 0;
};

// ModelLoadOptions::dtype's default for `config` on `device`.
DType default_model_dtype(const ModelConfig& config, Device device);

// Loads the model of `dir` (config.json and model.safetensors or a sharded index). An
// unsupported model_type is an error naming the supported ones; a missing tensor or one of the
// wrong shape is an error naming the tensor and the file.
std::unique_ptr<CausalLM> load_model(const std::string& dir, const ModelLoadOptions& options = {});

// A model of `config`'s architecture and shapes with random weights made on options.device
// (SyntheticWeights: N(0, initializer_range^2), norms 1, biases 0; quantized there at
// options.bits), for benchmarks without a checkpoint. The same seed gives the same weights.
std::unique_ptr<CausalLM> load_synthetic_model(const ModelConfig& config,
                                               const ModelLoadOptions& options = {},
                                               uint64_t seed = 0);

// Writes `model` to directory `dir` (created if needed) as a Hugging Face checkpoint: the
// original config.json plus, for 2/4/8 bits, a quantization_config block {"quant_method":
// "marlin", "bits", "group_size", "format", "scales", "modules_not_converted"}; safetensors
// (sharded past 5 GB) where each quantized linear is <name>.weight_packed (u32 [K/P, N]) and
// <name>.weight_scale (f16 [K/g, N]) in the canonical layout, every other tensor in the
// checkpoint's dtype; and the tokenizer files of the model's source directory, where present.
void save_quantized(const CausalLM& model, const std::string& dir);

// Loads a directory written by save_quantized on `device`, memory-mapping the packed weights
// without re-quantizing them. load_model routes such a directory here too.
std::unique_ptr<CausalLM> load_quantized(const std::string& dir, Device device = Device::cpu());

// The model_types load_model accepts, e.g. {"llama", "mistral", "qwen2", "qwen3"}.
std::vector<std::string> supported_causal_lm_types();

}  // namespace marlin
