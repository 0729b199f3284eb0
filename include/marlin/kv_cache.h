// KVCache (the original MetalKVCache): keys and values of every layer, preallocated for
// max_seq_len positions and a batch, on one device. Each row (sequence) has its own length, kept
// in an i32 [B] tensor on the cache's device (with a host mirror for checks and errors): update()
// writes new keys and values at each row's own position, advance() moves the rows once every
// layer has been updated. Rows of different lengths share every forward pass.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "marlin/ops_nn.h"
#include "marlin/tensor.h"

namespace marlin {

struct KVCacheConfig {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_seq_len = 0;
  DType dtype = DType::f16;
  // Keys only, no values: multi-head latent attention caches one row per token (num_kv_heads
  // 1, head_dim = kv_lora_rank + qk_rope_head_dim) that serves as key and value. update()
  // then takes an undefined v_new, and values() is an error.
  bool keys_only = false;
};

// A forward step through the cache (what LlamaModel::forward does, and what a CUDA graph of the
// decode step captures):
//   begin_step(T)           step_lengths() = lengths() + T         (one kernel)
//   update(layer, k, v)     each layer writes at lengths()[b] + t  (one kernel per k and v)
//   attention over step_lengths()                                  (reads the device lengths)
//   end_step()              lengths() += T                         (one kernel)
// Every per-step value lives in buffers made at construction (lengths(), step_lengths(),
// step_new_tokens()), so their addresses never change and no host value reaches the kernels.
// The host mirror moves with the calls; after replaying a captured step (the kernels ran, the
// host code did not) refresh_host_lengths() reads the device lengths back.
class KVCache {
 public:
  explicit KVCache(const KVCacheConfig& config, int64_t batch_size = 1,
                   Device device = Device::cpu());

  // Writes k_new and v_new [B, Hkv, T, D] (any strides: a [B, T, Hkv, D] projection output
  // seen through transpose(1, 2) needs no copy): token t of row b at position lengths()[b] + t,
  // read on the device. In a step begun with per-row new_tokens only each row's first
  // new_tokens[b] tokens are written (its right padding never is); otherwise all T (and a step
  // of T tokens is begun if none is). Returns views [B, Hkv, L, D] of the layer's keys and
  // values so far, L = the longest row once the step is written (a shorter row's entries past
  // its own length are stale). Writing past max_seq_len in any row is an error naming the row.
  std::pair<Tensor, Tensor> update(int64_t layer_idx, const Tensor& k_new, const Tensor& v_new);
  // The same for k_new and v_new [B x T, Hkv, D] (token b T + t is row b's t-th), after rotating
  // q and k_new in place by `rope` at `positions` (ops::rope): on CUDA the rotation and the write
  // are one launch (ops::rope_cache_write). Not for a keys-only cache.
  std::pair<Tensor, Tensor> update_rotated(int64_t layer_idx, const Tensor& q, const Tensor& k_new,
                                           const Tensor& v_new, const Tensor& positions,
                                           const ops::RopeParams& rope);
  // A decode step of one layer (one new token in every row, no per-row counts): update_rotated
  // and then attention over the step's lengths, as ops::rope_attention_decode (one launch on
  // CUDA). q [B, Hq, D]; k_new and v_new [B, Hkv, D]. Returns [B, Hq, D].
  Tensor attend_rotated(int64_t layer_idx, const Tensor& q, const Tensor& k_new, const Tensor& v_new,
                        const Tensor& positions, const ops::RopeParams& rope, float scale,
                        int64_t sliding_window = 0);
  // MLA (a keys-only latent cache): ckv [B x T, 1, R + Dr] (latent | k_rope) and q_rope [B x T,
  // heads, Dr] as ops::mla_rope_cache_write takes them: q_rope and k_rope rotated in place, the
  // latent normalized with norm_weight on its way to the cache, the row written where update()
  // writes (one launch on CUDA).
  void update_latent(int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv, const Tensor& positions,
                     const ops::RopeParams& rope, const Tensor& norm_weight, double eps);
  // update_latent, then returns ops::mla_head_matmul(x, w) (the absorbed decode's q_nope and
  // W_UK), both in one launch on CUDA (ops::mla_rope_cache_write_head_matmul).
  Tensor update_latent_head_matmul(int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv, const Tensor& positions,
                                   const ops::RopeParams& rope, const Tensor& norm_weight, double eps, const Tensor& x,
                                   const Tensor& w);
  // Moves every row by num_tokens (>= 0) after every layer has written them; ends the step in
  // flight, if any. A device kernel: no copy from the host.
  void advance(int64_t num_tokens = 1);
  // Moves row b by num_tokens[b] (one entry per row, each >= 0).
  void advance(const std::vector<int64_t>& num_tokens);
  // Every row back to position 0; the buffers are kept (their old contents are never read again).
  void reset();

  // The longest row (all rows, when they advance together), and one row's length.
  int64_t seq_len() const { return longest_; }
  int64_t seq_len(int64_t row) const;
  // The host mirror of lengths(), one entry per row.
  const std::vector<int64_t>& row_lengths() const { return host_lengths_; }
  int64_t batch_size() const { return batch_size_; }
  const KVCacheConfig& config() const { return config_; }
  Device device() const { return device_; }
  // The whole buffers [B, Hkv, max_seq_len, D] of a layer, for ops::attention_decode/extend.
  const Tensor& keys(int64_t layer_idx) const;
  const Tensor& values(int64_t layer_idx) const;
  // i32 [B] on the cache's device, entry b = seq_len(b) + extra (a new tensor, from the host
  // mirror): the lengths attention sees while `extra` tokens are written but not advanced over.
  Tensor seq_lens(int64_t extra = 0) const;

  // ---- Steps, with every per-step value on the device ------------------------------------
  // i32 [B]: tokens stored per row. With one new token per row these are also its positions.
  const Tensor& lengths() const { return lengths_; }
  // Declares the next T (>= 1) tokens of every row. An error naming the row if one would pass
  // max_seq_len; a step already in flight is replaced.
  void begin_step(int64_t num_tokens);
  // T tokens per row of which row b's first new_tokens[b] (0..T) are real and the rest right
  // padding: a batch of prompts of different lengths. Copies the counts to the device.
  void begin_step(int64_t num_tokens, const std::vector<int64_t>& new_tokens);
  // T of the step in flight, 0 when none.
  int64_t step_tokens() const { return step_tokens_; }
  // i32 [B]: each row's length once the step in flight is written (attention's seq_lens).
  const Tensor& step_lengths() const { return step_lengths_; }
  // i32 [B]: the step's real tokens per row, for attention_extend's new_tokens; undefined (an
  // empty Tensor) when every row has all T.
  const Tensor& step_new_tokens() const;
  // The longest row once the step in flight is written.
  int64_t step_seq_len() const { return step_longest_; }
  // Each row advances by its new tokens of the step in flight (a device kernel).
  void end_step();
  // Reads lengths() back into the host mirror (one device-to-host copy and a sync).
  void refresh_host_lengths();

 private:
  void check_layer(const char* op, int64_t layer_idx) const;
  // update()'s checks of k_new and v_new [B, Hkv, T, D], and the step they belong to (begun if
  // none is).
  void check_new_entries(const char* op, int64_t layer_idx, const Tensor& k_new, const Tensor& v_new);
  // The same for k_new and v_new [B x T, Hkv, D] (update_rotated, attend_rotated).
  void check_rotated_entries(const char* op, int64_t layer_idx, const Tensor& k_new, const Tensor& v_new);
  // The same for update_latent's q_rope and ckv.
  void check_latent_step(const char* op, int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv);
  void check_room(const char* op, const std::vector<int64_t>* added, int64_t uniform) const;
  // Adds to the host mirror (added[b], or uniform when added is null) and ends any step.
  void add_to_host_lengths(const std::vector<int64_t>* added, int64_t uniform);

  KVCacheConfig config_;
  int64_t batch_size_;
  Device device_;
  std::vector<Tensor> keys_, values_;
  Tensor lengths_, step_lengths_, new_tokens_;  // i32 [B] on device_, made once
  std::vector<int64_t> host_lengths_, host_new_tokens_;
  int64_t longest_ = 0, step_longest_ = 0;
  int64_t step_tokens_ = 0;
  bool step_padded_ = false;
};

}  // namespace marlin
