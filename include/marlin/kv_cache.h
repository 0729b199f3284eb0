// KVCache (the original MetalKVCache): keys and values of every layer, preallocated for
// max_seq_len positions and a batch, on one device. update() writes new keys and values at the
// current position; advance() moves the position once every layer has been updated.
#pragma once

#include <utility>
#include <vector>

#include "marlin/tensor.h"

namespace marlin {

struct KVCacheConfig {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_seq_len = 0;
  DType dtype = DType::f16;
};

class KVCache {
 public:
  explicit KVCache(const KVCacheConfig& config, int64_t batch_size = 1,
                   Device device = Device::cpu());

  // Writes k_new and v_new [B, Hkv, T, D] (any strides: a [B, T, Hkv, D] projection output
  // seen through transpose(1, 2) needs no copy) at positions [seq_len(), seq_len() + T) of the
  // layer and returns views [B, Hkv, seq_len() + T, D] of its keys and values so far. Writing
  // past max_seq_len is an error naming the sizes.
  std::pair<Tensor, Tensor> update(int64_t layer_idx, const Tensor& k_new, const Tensor& v_new);
  // Moves the position by num_tokens (>= 0) after every layer has written them.
  void advance(int64_t num_tokens = 1);
  // Back to position 0; the buffers are kept (their old contents are never read again).
  void reset();

  int64_t seq_len() const { return seq_len_; }
  int64_t batch_size() const { return batch_size_; }
  const KVCacheConfig& config() const { return config_; }
  Device device() const { return device_; }
  // The whole buffers [B, Hkv, max_seq_len, D] of a layer, for ops::attention_decode/extend.
  const Tensor& keys(int64_t layer_idx) const;
  const Tensor& values(int64_t layer_idx) const;
  // i32 [B] on the cache's device, every entry = seq_len() + extra: the lengths attention
  // sees while the tokens being written (extra of them) are not yet advanced over.
  Tensor seq_lens(int64_t extra = 0) const;

 private:
  void check_layer(const char* op, int64_t layer_idx) const;

  KVCacheConfig config_;
  int64_t batch_size_;
  Device device_;
  int64_t seq_len_ = 0;
  std::vector<Tensor> keys_, values_;
};

}  // namespace marlin
