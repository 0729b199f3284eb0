// KVCache: one [B, Hkv, max_seq_len, D] buffer per layer for keys and one for values, written
// in place by ops::attention_cache_write.
#include "marlin/kv_cache.h"

#include "marlin/attention.h"

namespace marlin {

KVCache::KVCache(const KVCacheConfig& config, int64_t batch_size, Device device)
    : config_(config), batch_size_(batch_size), device_(device) {
  constexpr const char* op = "KVCache";
  MARLIN_CHECK(config.num_layers >= 1 && config.num_kv_heads >= 1 && config.head_dim >= 1 &&
                   config.max_seq_len >= 1,
               op, "num_layers, num_kv_heads, head_dim and max_seq_len must be >= 1, got ",
               config.num_layers, ", ", config.num_kv_heads, ", ", config.head_dim, ", ",
               config.max_seq_len);
  MARLIN_CHECK(batch_size >= 1, op, "batch_size must be >= 1, got ", batch_size);
  MARLIN_CHECK(config.dtype == DType::f16 || config.dtype == DType::bf16 ||
                   config.dtype == DType::f32,
               op, "dtype must be f16, bf16 or f32, got ", dtype_name(config.dtype));
  const Shape shape{batch_size, config.num_kv_heads, config.max_seq_len, config.head_dim};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    keys_.push_back(Tensor::empty(shape, config.dtype, device));
    values_.push_back(Tensor::empty(shape, config.dtype, device));
  }
}

void KVCache::check_layer(const char* op, int64_t layer_idx) const {
  MARLIN_CHECK(layer_idx >= 0 && layer_idx < config_.num_layers, op, "layer_idx=", layer_idx,
               " out of range for ", config_.num_layers, " layers");
}

std::pair<Tensor, Tensor> KVCache::update(int64_t layer_idx, const Tensor& k_new,
                                          const Tensor& v_new) {
  constexpr const char* op = "KVCache::update";
  check_layer(op, layer_idx);
  for (const Tensor* t : {&k_new, &v_new}) {
    MARLIN_CHECK(t->defined() && t->dim() == 4 && t->size(0) == batch_size_ &&
                     t->size(1) == config_.num_kv_heads && t->size(3) == config_.head_dim,
                 op, "new keys and values must be [B, Hkv, T, D] = [", batch_size_, ", ",
                 config_.num_kv_heads, ", T, ", config_.head_dim, "], got ",
                 t->defined() ? t->describe() : "an undefined tensor");
    MARLIN_CHECK(t->dtype() == config_.dtype && t->device() == device_, op,
                 "new keys and values must be ", dtype_name(config_.dtype), " on ",
                 device_.str(), ", got ", t->describe());
  }
  MARLIN_CHECK(k_new.size(2) == v_new.size(2), op, "k_new has T=", k_new.size(2),
               " tokens but v_new T=", v_new.size(2));
  const int64_t end = seq_len_ + k_new.size(2);
  MARLIN_CHECK(end <= config_.max_seq_len, op, "writing ", k_new.size(2),
               " tokens at position ", seq_len_, " needs ", end,
               " positions, beyond max_seq_len=", config_.max_seq_len);
  Tensor& k = keys_[static_cast<size_t>(layer_idx)];
  Tensor& v = values_[static_cast<size_t>(layer_idx)];
  ops::attention_cache_write(k, k_new, seq_len_);
  ops::attention_cache_write(v, v_new, seq_len_);
  return {k.narrow(2, 0, end), v.narrow(2, 0, end)};
}

void KVCache::advance(int64_t num_tokens) {
  MARLIN_CHECK(num_tokens >= 0, "KVCache::advance", "num_tokens must be >= 0, got ", num_tokens);
  MARLIN_CHECK(seq_len_ + num_tokens <= config_.max_seq_len, "KVCache::advance",
               "advancing by ", num_tokens, " from position ", seq_len_, " exceeds max_seq_len=",
               config_.max_seq_len);
  seq_len_ += num_tokens;
}

void KVCache::reset() { seq_len_ = 0; }

const Tensor& KVCache::keys(int64_t layer_idx) const {
  check_layer("KVCache::keys", layer_idx);
  return keys_[static_cast<size_t>(layer_idx)];
}

const Tensor& KVCache::values(int64_t layer_idx) const {
  check_layer("KVCache::values", layer_idx);
  return values_[static_cast<size_t>(layer_idx)];
}

Tensor KVCache::seq_lens(int64_t extra) const {
  const int64_t n = seq_len_ + extra;
  MARLIN_CHECK(extra >= 0 && n <= config_.max_seq_len, "KVCache::seq_lens", "length ", n,
               " outside [", seq_len_, ", max_seq_len=", config_.max_seq_len, "]");
  const std::vector<int32_t> lens(static_cast<size_t>(batch_size_), static_cast<int32_t>(n));
  return Tensor::from_vector(lens, {batch_size_}, DType::i32).to(device_);
}

}  // namespace marlin
