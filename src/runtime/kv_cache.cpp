// KVCache: one [B, Hkv, max_seq_len, D] buffer per layer for keys and one for values, written
// in place by ops::attention_cache_write at positions read from the device lengths.
#include "marlin/kv_cache.h"

#include <algorithm>

#include "marlin/attention.h"

namespace marlin {
namespace {

Tensor device_lengths(int64_t batch_size, Device device) {
  Tensor t = Tensor::empty({batch_size}, DType::i32, device);
  t.fill_bytes(0);
  return t;
}

}  // namespace

KVCache::KVCache(const KVCacheConfig& config, int64_t batch_size, Device device)
    : config_(config), batch_size_(batch_size), device_(device) {
  constexpr const char* op = "KVCache";
  MARLIN_CHECK(config.num_layers >= 1 && config.num_kv_heads >= 1 && config.head_dim >= 1 &&
                   config.max_seq_len >= 1,
               op, "num_layers, num_kv_heads, head_dim and max_seq_len must be >= 1, got ",
               config.num_layers, ", ", config.num_kv_heads, ", ", config.head_dim, ", ",
               config.max_seq_len);
  MARLIN_CHECK(batch_size >= 1, op, "batch_size must be >= 1, got ", batch_size);
  MARLIN_CHECK(config.max_seq_len <= INT32_MAX, op, "max_seq_len=", config.max_seq_len,
               " does not fit the i32 lengths");
  MARLIN_CHECK(config.dtype == DType::f16 || config.dtype == DType::bf16 ||
                   config.dtype == DType::f32,
               op, "dtype must be f16, bf16 or f32, got ", dtype_name(config.dtype));
  const Shape shape{batch_size, config.num_kv_heads, config.max_seq_len, config.head_dim};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    keys_.push_back(Tensor::empty(shape, config.dtype, device));
    if (!config.keys_only) values_.push_back(Tensor::empty(shape, config.dtype, device));
  }
  lengths_ = device_lengths(batch_size, device);
  step_lengths_ = device_lengths(batch_size, device);
  new_tokens_ = device_lengths(batch_size, device);
  host_lengths_.assign(static_cast<size_t>(batch_size), 0);
  host_new_tokens_.assign(static_cast<size_t>(batch_size), 0);
}

void KVCache::check_layer(const char* op, int64_t layer_idx) const {
  MARLIN_CHECK(layer_idx >= 0 && layer_idx < config_.num_layers, op, "layer_idx=", layer_idx,
               " out of range for ", config_.num_layers, " layers");
}

// Row b takes added[b] more tokens, or `uniform` when added is null (no vector is made per step).
void KVCache::check_room(const char* op, const std::vector<int64_t>* added, int64_t uniform) const {
  if (added != nullptr) {
    MARLIN_CHECK(static_cast<int64_t>(added->size()) == batch_size_, op, "one count per row: ",
                 batch_size_, " rows, got ", added->size(), " counts");
  }
  for (int64_t b = 0; b < batch_size_; ++b) {
    const auto i = static_cast<size_t>(b);
    const int64_t n = added != nullptr ? (*added)[i] : uniform, at = host_lengths_[i];
    MARLIN_CHECK(n >= 0, op, "row ", b, ": the token count must be >= 0, got ", n);
    MARLIN_CHECK(at + n <= config_.max_seq_len, op, "row ", b, ": ", n, " tokens at position ",
                 at, " need ", at + n, " positions, beyond max_seq_len=", config_.max_seq_len);
  }
}

void KVCache::add_to_host_lengths(const std::vector<int64_t>* added, int64_t uniform) {
  for (size_t b = 0; b < host_lengths_.size(); ++b)
    host_lengths_[b] += added != nullptr ? (*added)[b] : uniform;
  longest_ = *std::max_element(host_lengths_.begin(), host_lengths_.end());
  step_tokens_ = 0;
  step_padded_ = false;
  step_longest_ = longest_;
}

int64_t KVCache::seq_len(int64_t row) const {
  MARLIN_CHECK(row >= 0 && row < batch_size_, "KVCache::seq_len", "row=", row,
               " out of range for ", batch_size_, " rows");
  return host_lengths_[static_cast<size_t>(row)];
}

void KVCache::begin_step(int64_t num_tokens) {
  constexpr const char* op = "KVCache::begin_step";
  MARLIN_CHECK(num_tokens >= 1, op, "a step holds at least one token, got ", num_tokens);
  check_room(op, nullptr, num_tokens);
  ops::add_lengths(lengths_, num_tokens, {}, step_lengths_);
  step_tokens_ = num_tokens;
  step_padded_ = false;
  step_longest_ = longest_ + num_tokens;
}

void KVCache::begin_step(int64_t num_tokens, const std::vector<int64_t>& new_tokens) {
  constexpr const char* op = "KVCache::begin_step";
  MARLIN_CHECK(num_tokens >= 1, op, "a step holds at least one token, got ", num_tokens);
  check_room(op, &new_tokens, 0);
  bool all = true;
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t n = new_tokens[static_cast<size_t>(b)];
    MARLIN_CHECK(n <= num_tokens, op, "row ", b, " has ", n, " new tokens, more than the step's ",
                 num_tokens);
    all = all && n == num_tokens;
  }
  if (all) return begin_step(num_tokens);  // no padding: the kernels of an ordinary step
  const std::vector<int32_t> counts(new_tokens.begin(), new_tokens.end());
  new_tokens_.copy_from(Tensor::from_vector(counts, {batch_size_}, DType::i32));
  ops::add_lengths(lengths_, 0, new_tokens_, step_lengths_);
  host_new_tokens_ = new_tokens;
  step_tokens_ = num_tokens;
  step_padded_ = true;
  step_longest_ = 0;
  for (int64_t b = 0; b < batch_size_; ++b)
    step_longest_ = std::max(step_longest_, host_lengths_[static_cast<size_t>(b)] +
                                                new_tokens[static_cast<size_t>(b)]);
}

const Tensor& KVCache::step_new_tokens() const {
  static const Tensor kNone;
  return step_padded_ ? new_tokens_ : kNone;
}

void KVCache::end_step() {
  MARLIN_CHECK(step_tokens_ > 0, "KVCache::end_step", "no step in flight (begin_step first)");
  ops::add_lengths(lengths_, step_tokens_, step_padded_ ? new_tokens_ : Tensor(), lengths_);
  add_to_host_lengths(step_padded_ ? &host_new_tokens_ : nullptr, step_tokens_);
}

void KVCache::check_new_entries(const char* op, int64_t layer_idx, const Tensor& k_new, const Tensor& v_new) {
  check_layer(op, layer_idx);
  MARLIN_CHECK(config_.keys_only != v_new.defined(), op,
               config_.keys_only ? "a keys-only (latent) cache takes no values"
                                 : "v_new is undefined");
  for (const Tensor* t : {&k_new, &v_new}) {
    if (!t->defined()) continue;  // keys_only
    MARLIN_CHECK(t->defined() && t->dim() == 4 && t->size(0) == batch_size_ &&
                     t->size(1) == config_.num_kv_heads && t->size(3) == config_.head_dim,
                 op, "new keys and values must be [B, Hkv, T, D] = [", batch_size_, ", ",
                 config_.num_kv_heads, ", T, ", config_.head_dim, "], got ",
                 t->defined() ? t->describe() : "an undefined tensor");
    MARLIN_CHECK(t->dtype() == config_.dtype && t->device() == device_, op,
                 "new keys and values must be ", dtype_name(config_.dtype), " on ",
                 device_.str(), ", got ", t->describe());
  }
  const int64_t T = k_new.size(2);
  MARLIN_CHECK(!v_new.defined() || T == v_new.size(2), op, "k_new has T=", T, " tokens but v_new T=", v_new.size(2));
  MARLIN_CHECK(T >= 1, op, "nothing to write: T=0");
  // The original API calls update, then advance, with no begin_step: the first update begins it.
  if (step_tokens_ == 0) begin_step(T);
  MARLIN_CHECK(T == step_tokens_, op, "writing T=", T, " tokens in a step of ", step_tokens_,
               " (advance or end_step first)");
}

std::pair<Tensor, Tensor> KVCache::update(int64_t layer_idx, const Tensor& k_new,
                                          const Tensor& v_new) {
  check_new_entries("KVCache::update", layer_idx, k_new, v_new);
  Tensor& k = keys_[static_cast<size_t>(layer_idx)];
  if (config_.keys_only) {
    ops::attention_cache_write(k, k_new, lengths_, step_new_tokens());
    return {k.narrow(2, 0, step_longest_), Tensor()};
  }
  Tensor& v = values_[static_cast<size_t>(layer_idx)];
  ops::attention_cache_write_kv(k, k_new, v, v_new, lengths_, step_new_tokens());
  return {k.narrow(2, 0, step_longest_), v.narrow(2, 0, step_longest_)};
}

void KVCache::check_rotated_entries(const char* op, int64_t layer_idx, const Tensor& k_new, const Tensor& v_new) {
  MARLIN_CHECK(!config_.keys_only, op, "a keys-only (latent) cache takes no values: use update()");
  for (const Tensor* t : {&k_new, &v_new})
    MARLIN_CHECK(t->defined() && t->dim() == 3 && t->size(0) % batch_size_ == 0, op,
                 "new keys and values must be [B x T, Hkv, D] with B=", batch_size_, ", got ",
                 t->defined() ? t->describe() : "an undefined tensor");
  const int64_t T = k_new.size(0) / batch_size_;
  auto rows = [&](const Tensor& t) { return t.view({batch_size_, T, t.size(1), t.size(2)}).transpose(1, 2); };
  check_new_entries(op, layer_idx, rows(k_new), rows(v_new));
}

std::pair<Tensor, Tensor> KVCache::update_rotated(int64_t layer_idx, const Tensor& q, const Tensor& k_new,
                                                  const Tensor& v_new, const Tensor& positions,
                                                  const ops::RopeParams& rope) {
  check_rotated_entries("KVCache::update_rotated", layer_idx, k_new, v_new);
  Tensor& k = keys_[static_cast<size_t>(layer_idx)];
  Tensor& v = values_[static_cast<size_t>(layer_idx)];
  ops::rope_cache_write(q, k_new, v_new, positions, rope, k, v, lengths_, step_new_tokens());
  return {k.narrow(2, 0, step_longest_), v.narrow(2, 0, step_longest_)};
}

void KVCache::check_latent_step(const char* op, int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv) {
  MARLIN_CHECK(config_.keys_only, op, "needs a keys-only (latent) cache");
  MARLIN_CHECK(ckv.defined() && ckv.dim() == 3 && ckv.size(0) % batch_size_ == 0 && ckv.size(1) == 1, op,
               "ckv must be [B x T, 1, latent] with B=", batch_size_, ", got ",
               ckv.defined() ? ckv.describe() : "an undefined tensor");
  MARLIN_CHECK(q_rope.defined() && q_rope.dim() == 3 && q_rope.size(2) < ckv.size(2), op,
               "q_rope must be [B x T, heads, rope dims < ", ckv.size(2), "], got ",
               q_rope.defined() ? q_rope.describe() : "an undefined tensor");
  const int64_t T = ckv.size(0) / batch_size_, L = ckv.size(2);
  check_new_entries(op, layer_idx, ckv.view({batch_size_, T, 1, L}).transpose(1, 2), Tensor());
}

void KVCache::update_latent(int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv, const Tensor& positions,
                            const ops::RopeParams& rope, const Tensor& norm_weight, double eps) {
  check_latent_step("KVCache::update_latent", layer_idx, q_rope, ckv);
  const int64_t L = ckv.size(2), Dr = q_rope.size(2);
  ops::mla_rope_cache_write(q_rope, ckv.narrow(2, L - Dr, Dr), ckv.narrow(2, 0, L - Dr), positions, rope, norm_weight,
                            eps, keys_[static_cast<size_t>(layer_idx)], lengths_, step_new_tokens());
}

Tensor KVCache::update_latent_head_matmul(int64_t layer_idx, const Tensor& q_rope, const Tensor& ckv,
                                          const Tensor& positions, const ops::RopeParams& rope,
                                          const Tensor& norm_weight, double eps, const Tensor& x, const Tensor& w) {
  constexpr const char* op = "KVCache::update_latent_head_matmul";
  check_latent_step(op, layer_idx, q_rope, ckv);
  const int64_t L = ckv.size(2), Dr = q_rope.size(2);
  return ops::mla_rope_cache_write_head_matmul(q_rope, ckv.narrow(2, L - Dr, Dr), ckv.narrow(2, 0, L - Dr), positions,
                                               rope, norm_weight, eps, keys_[static_cast<size_t>(layer_idx)], lengths_,
                                               step_new_tokens(), x, w);
}

Tensor KVCache::attend_rotated(int64_t layer_idx, const Tensor& q, const Tensor& k_new, const Tensor& v_new,
                               const Tensor& positions, const ops::RopeParams& rope, float scale,
                               int64_t sliding_window) {
  constexpr const char* op = "KVCache::attend_rotated";
  check_rotated_entries(op, layer_idx, k_new, v_new);
  MARLIN_CHECK(step_tokens_ == 1 && !step_padded_, op, "a decode step has one new token in every row, got ",
               step_tokens_, step_padded_ ? " with per-row counts" : "");
  return ops::rope_attention_decode(q, k_new, v_new, positions, rope, keys_[static_cast<size_t>(layer_idx)],
                                    values_[static_cast<size_t>(layer_idx)], lengths_, scale, sliding_window);
}

void KVCache::advance(int64_t num_tokens) {
  MARLIN_CHECK(num_tokens >= 0, "KVCache::advance", "num_tokens must be >= 0, got ", num_tokens);
  check_room("KVCache::advance", nullptr, num_tokens);
  ops::add_lengths(lengths_, num_tokens, {}, lengths_);
  add_to_host_lengths(nullptr, num_tokens);
}

void KVCache::advance(const std::vector<int64_t>& num_tokens) {
  check_room("KVCache::advance", &num_tokens, 0);
  const std::vector<int32_t> counts(num_tokens.begin(), num_tokens.end());
  new_tokens_.copy_from(Tensor::from_vector(counts, {batch_size_}, DType::i32));
  ops::add_lengths(lengths_, 0, new_tokens_, lengths_);
  add_to_host_lengths(&num_tokens, 0);
}

void KVCache::reset() {
  lengths_.fill_bytes(0);
  std::fill(host_lengths_.begin(), host_lengths_.end(), 0);
  add_to_host_lengths(nullptr, 0);
}

void KVCache::refresh_host_lengths() {
  const Tensor host = lengths_.to(Device::cpu());
  const int32_t* p = host.data<int32_t>();
  std::copy(p, p + batch_size_, host_lengths_.begin());
  add_to_host_lengths(nullptr, 0);
}

const Tensor& KVCache::keys(int64_t layer_idx) const {
  check_layer("KVCache::keys", layer_idx);
  return keys_[static_cast<size_t>(layer_idx)];
}

const Tensor& KVCache::values(int64_t layer_idx) const {
  check_layer("KVCache::values", layer_idx);
  MARLIN_CHECK(!config_.keys_only, "KVCache::values", "a keys-only (latent) cache holds no values");
  return values_[static_cast<size_t>(layer_idx)];
}

Tensor KVCache::seq_lens(int64_t extra) const {
  std::vector<int32_t> lens(static_cast<size_t>(batch_size_));
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t n = host_lengths_[static_cast<size_t>(b)] + extra;
    MARLIN_CHECK(extra >= 0 && n <= config_.max_seq_len, "KVCache::seq_lens", "row ", b,
                 ": length ", n, " outside [", host_lengths_[static_cast<size_t>(b)],
                 ", max_seq_len=", config_.max_seq_len, "]");
    lens[static_cast<size_t>(b)] = static_cast<int32_t>(n);
  }
  return Tensor::from_vector(lens, {batch_size_}, DType::i32).to(device_);
}

}  // namespace marlin
