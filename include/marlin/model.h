// Causal language models assembled from the nn layers, and the registry that loads one from a
// Hugging Face model directory (config.json + safetensors) by its config's model_type.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "marlin/kv_cache.h"
#include "marlin/model_config.h"
#include "marlin/nn.h"
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
  // Linear layers kept 16-bit whatever `bits` says: a layer whose Hugging Face module path
  // ("model.layers.0.mlp.down_proj") contains one of these fragments. A checkpoint of
  // save_quantized fills it from its quantization_config.modules_not_converted.
  std::vector<std::string> modules_not_converted;
  // q/k/v and gate/up as one GEMM each, reading their weights concatenated along N, where
  // their bits and group sizes agree. Off: one GEMM per projection (the reference).
  bool fuse_projections = true;
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
  // True when a decode step (forward of [B, 1] ids through a cache) runs on the device alone —
  // no host copy, wait or allocation that depends on values — so DecodeGraph can capture it
  // as a CUDA graph. Models that do not say so run their decode steps eagerly.
  virtual bool decode_graph_capturable() const { return false; }
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

class MoE;  // marlin/moe.h

// The MoE feed-forward of `config`'s first MoE layer alone, with the random weights
// load_synthetic_model(config, options, seed) gives that layer (same names, so the same values),
// quantized at options.bits on options.device: kernel benchmarks of one layer without the rest
// of the model. A config without MoE layers is an error.
std::shared_ptr<const MoE> load_synthetic_moe(const ModelConfig& config,
                                              const ModelLoadOptions& options = {},
                                              uint64_t seed = 0);

// Writes `model` to directory `dir` (created if needed) as a Hugging Face checkpoint: the
// original config.json plus, for 2/4/8 bits, a quantization_config block {"quant_method":
// "marlin", "bits", "group_size", "format", "scales", "modules_not_converted"}; safetensors
// (sharded past 5 GB) where each quantized linear is <name>.weight_packed (u32 [K/P, N]) and
// <name>.weight_scale (f16 [K/g, N]) in the canonical layout, every other tensor in the
// checkpoint's dtype; and the tokenizer files of the model's source directory, where present.
// modules_not_converted lists the embeddings and every linear kept 16-bit; fused projections
// are written under their own names (q_proj, k_proj, v_proj, gate_proj, up_proj), exactly as an
// unfused model writes them. A quantized lm_head of a tied model is written as its own tensor
// (tie_word_embeddings becomes false). Linears quantized to different bits or group sizes
// cannot be saved together (an error naming them). MoE experts and shared experts are linears
// under their checkpoint names; routers, score biases and norms keep the checkpoint's dtype.
// Llama-family and MLA models (deepseek_v2/v3, glm4_moe_lite) can be saved; others are an error.
void save_quantized(const CausalLM& model, const std::string& dir);

// What quantize_linear_layers did: the original replace_linear_layers' replaced_count and
// skipped_count.
struct QuantizeStats {
  int64_t replaced = 0;  // linear layers quantized
  int64_t skipped = 0;   // 16-bit linear layers left as they were (skip_layers, filter or shape)
};

// Asked per linear layer by its Hugging Face module path: true quantizes it.
using LayerFilter = std::function<bool(const std::string& name, const QuantizedLinear& layer)>;

// The original replace_linear_layers: quantizes the 16-bit linear layers of `model` in place to
// `bits` (8, 4 or 2) with `group_size` along K, by their Hugging Face module paths
// ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.experts.3.up_proj",
// "model.layers.0.self_attn.kv_b_proj", "lm_head"; MoE routers are not linears here). A layer is skipped (left 16-bit and counted)
// when one of the skip_layers fragments occurs in its path (default {"lm_head"}: give another
// list, e.g. an empty one, to quantize lm_head too), when layer_filter returns false for it,
// or when its in_features is not a multiple of group_size. Embeddings stay 16-bit; layers
// already quantized stay as they are and are not counted. Fused q/k/v and gate/up are
// quantized part by part and fused again where the parts' bits agree. save_quantized of the
// result lists the skipped layers in modules_not_converted.
QuantizeStats quantize_linear_layers(CausalLM& model, int bits = 4, int group_size = 128,
                                     const std::optional<std::vector<std::string>>& skip_layers = std::nullopt,
                                     const LayerFilter& layer_filter = nullptr,
                                     ScaleMethod scales = ScaleMethod::absmax);

struct QuantizedModel {
  std::unique_ptr<CausalLM> model;
  QuantizeStats stats;
};

// load_model(path) with 16-bit weights on `device`, then quantize_linear_layers(bits,
// group_size) with its defaults. For a checkpoint in bf16/f16 (or any checkpoint on the CPU)
// the logits equal load_model(path, {device, bits, group_size})'s wherever every layer's shape
// allows the group size.
QuantizedModel load_and_quantize(const std::string& path, int bits = 4, int group_size = 128,
                                 Device device = Device::cpu());

// Loads a directory written by save_quantized on `device`, memory-mapping the packed weights
// without re-quantizing them. load_model routes such a directory here too.
std::unique_ptr<CausalLM> load_quantized(const std::string& dir, Device device = Device::cpu());

// The model_types load_model accepts, e.g. {"llama", "mistral", "qwen2", "qwen3"}.
std::vector<std::string> supported_causal_lm_types();

}  // namespace marlin
