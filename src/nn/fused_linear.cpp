// Fused projections: QuantizedLinear layers concatenated along N (and split back), so that q/k/v
// or gate/up run as one GEMM reading one weight; and the in-place quantization of a 16-bit layer.
#include <numeric>
#include <string>
#include <utility>

#include "marlin/nn.h"
#include "marlin/ops.h"

namespace marlin {
namespace {

// Tensors [..., N_i] (one dtype and device) side by side along the last dim.
Tensor concat_last_dim(const std::vector<Tensor>& parts) {
  int64_t total = 0;
  for (const Tensor& p : parts) total += p.size(-1);
  Shape shape = parts.front().shape();
  shape.back() = total;
  Tensor out = Tensor::empty(shape, parts.front().dtype(), parts.front().device());
  int64_t offset = 0;
  for (const Tensor& p : parts) {
    out.narrow(-1, offset, p.size(-1)).copy_from(p);  // a column block: one 2-D copy
    offset += p.size(-1);
  }
  return out;
}

// Why `parts` cannot be one layer, or "" when they can.
std::string concat_mismatch(const std::vector<QuantizedLinear>& parts) {
  if (parts.empty()) return "no layers given";
  const QuantizedLinear& a = parts.front();
  for (size_t i = 0; i < parts.size(); ++i) {
    const QuantizedLinear& b = parts[i];
    const std::string which = "layer " + std::to_string(i);
    if (b.in_features() <= 0) return which + " has no weights";
    if (b.in_features() != a.in_features())
      return which + " reads " + std::to_string(b.in_features()) + " features, layer 0 " +
             std::to_string(a.in_features());
    if (b.bits() != a.bits())
      return which + " has " + std::to_string(b.bits()) + " bits, layer 0 " + std::to_string(a.bits());
    if (b.bits() != 16 && b.group_size() != a.group_size())
      return which + " has group size " + std::to_string(b.group_size()) + ", layer 0 " +
             std::to_string(a.group_size());
    if (b.placement().device != a.placement().device || b.placement().dtype != a.placement().dtype)
      return which + " computes in " + std::string(dtype_name(b.placement().dtype)) + " on " +
             b.placement().device.str() + ", layer 0 in " + std::string(dtype_name(a.placement().dtype)) +
             " on " + a.placement().device.str();
    if (b.bias().defined() != a.bias().defined()) return which + " and layer 0 differ in having a bias";
  }
  return "";
}

}  // namespace

bool QuantizedLinear::can_concat(const std::vector<QuantizedLinear>& parts) {
  return concat_mismatch(parts).empty();
}

QuantizedLinear QuantizedLinear::concat(const std::vector<QuantizedLinear>& parts) {
  const std::string mismatch = concat_mismatch(parts);
  MARLIN_CHECK(mismatch.empty(), "QuantizedLinear::concat", "cannot concatenate: ", mismatch);
  const QuantizedLinear& first = parts.front();
  QuantizedLinear out;
  out.in_features_ = first.in_features_;
  out.bits_ = first.bits_;
  out.group_size_ = first.group_size_;
  out.placement_ = first.placement_;
  for (const QuantizedLinear& p : parts) out.out_features_ += p.out_features_;
  auto gather = [&](auto member) {
    std::vector<Tensor> tensors;
    for (const QuantizedLinear& p : parts) tensors.push_back(member(p));
    return concat_last_dim(tensors);
  };
  if (first.bits_ == 16) {
    out.weight_ = gather([](const QuantizedLinear& p) { return p.weight_; });
  } else {
    QuantizedWeight q;
    q.format = first.qweight_.format;
    q.group_size = first.qweight_.group_size;
    q.K = first.in_features_;
    q.N = out.out_features_;
    q.packed = gather([](const QuantizedLinear& p) { return p.qweight_.packed; });
    q.scales = gather([](const QuantizedLinear& p) { return p.qweight_.scales; });
    ops::prepare_for_gemm(q);  // the tile layout of the whole, made once
    out.qweight_ = std::move(q);
  }
  if (first.bias_.defined()) out.bias_ = gather([](const QuantizedLinear& p) { return p.bias_; });
  return out;
}

QuantizedLinear QuantizedLinear::columns(int64_t start, int64_t count) const {
  MARLIN_CHECK(in_features_ > 0, "QuantizedLinear::columns", "the layer has no weights");
  MARLIN_CHECK(start >= 0 && count >= 1 && start + count <= out_features_, "QuantizedLinear::columns",
               "columns [", start, ", ", start + count, ") are outside the layer's ", out_features_,
               " outputs");
  QuantizedLinear out = *this;
  out.out_features_ = count;
  if (bits_ == 16) {
    out.weight_ = weight_.narrow(1, start, count).contiguous();
  } else {
    QuantizedWeight q;
    q.format = qweight_.format;
    q.group_size = qweight_.group_size;
    q.K = qweight_.K;
    q.N = count;
    q.packed = qweight_.packed.narrow(1, start, count).contiguous();
    q.scales = qweight_.scales.narrow(1, start, count).contiguous();
    ops::prepare_for_gemm(q);
    out.qweight_ = std::move(q);
  }
  if (bias_.defined()) out.bias_ = bias_.narrow(0, start, count).contiguous();
  return out;
}

QuantizedLinear QuantizedLinear::quantized(int bits, int group_size, ScaleMethod scales) const {
  constexpr const char* op = "QuantizedLinear::quantized";
  MARLIN_CHECK(in_features_ > 0, op, "the layer has no weights");
  MARLIN_CHECK(bits_ == 16, op, "the layer is already quantized to ", bits_, " bits");
  MARLIN_CHECK(bits == 8 || bits == 4 || bits == 2, op, "bits must be 8, 4 or 2, got ", bits);
  // weight_ is [K, N]; the constructor takes Hugging Face's [out, in].
  return QuantizedLinear(weight_.transpose(0, 1), bias_, bits, group_size, placement_, scales);
}

FusedLinear::FusedLinear(std::vector<QuantizedLinear> parts, bool fuse) : fuse_(fuse) {
  constexpr const char* op = "FusedLinear";
  MARLIN_CHECK(!parts.empty(), op, "needs at least one layer");
  for (size_t i = 0; i < parts.size(); ++i) {
    MARLIN_CHECK(parts[i].in_features() > 0 && parts[i].in_features() == parts[0].in_features(), op,
                 "layer ", i, " reads ", parts[i].in_features(), " features but layer 0 reads ",
                 parts[0].in_features(), ": fused layers share their input");
    out_features_.push_back(parts[i].out_features());
  }
  if (fuse && parts.size() > 1 && QuantizedLinear::can_concat(parts)) {
    fused_ = QuantizedLinear::concat(parts);
  } else {
    parts_ = std::move(parts);
  }
}

int64_t FusedLinear::in_features() const {
  if (fused()) return fused_.in_features();
  return parts_.empty() ? 0 : parts_.front().in_features();
}

std::vector<Tensor> FusedLinear::forward(const Tensor& x) const {
  MARLIN_CHECK(!out_features_.empty(), "FusedLinear::forward", "the layer has no weights");
  std::vector<Tensor> out;
  out.reserve(out_features_.size());
  if (!fused()) {
    for (const QuantizedLinear& p : parts_) out.push_back(p.forward(x));
    return out;
  }
  const Tensor y = fused_.forward(x);
  int64_t offset = 0;
  for (const int64_t n : out_features_) {
    out.push_back(y.narrow(-1, offset, n));
    offset += n;
  }
  return out;
}

QuantizedLinear FusedLinear::part(size_t i) const {
  if (out_features_.empty()) return QuantizedLinear();
  MARLIN_CHECK(i < out_features_.size(), "FusedLinear::part", "part ", i, " of ", out_features_.size());
  if (!fused()) return parts_[i];
  const int64_t start = std::accumulate(out_features_.begin(), out_features_.begin() + static_cast<std::ptrdiff_t>(i),
                                        int64_t{0});
  return fused_.columns(start, out_features_[i]);
}

std::vector<QuantizedLinear> FusedLinear::parts() const {
  if (!fused()) return parts_;
  std::vector<QuantizedLinear> out;
  for (size_t i = 0; i < out_features_.size(); ++i) out.push_back(part(i));
  return out;
}

}  // namespace marlin
