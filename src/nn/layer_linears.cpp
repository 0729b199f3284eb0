// The linear layers of Attention, MLP and TransformerBlock by their Hugging Face module names:
// visited for saving, replaced for in-place quantization. A fused projection is handed over
// part by part (q_proj, k_proj, v_proj; gate_proj, up_proj) and fused again where the new parts
// allow it.
#include <string>
#include <utility>
#include <vector>

#include "marlin/nn.h"

namespace marlin {
namespace {

const char* const kQkvNames[] = {"q_proj", "k_proj", "v_proj"};
const char* const kGateUpNames[] = {"gate_proj", "up_proj"};

template <size_t N>
void visit_parts(const FusedLinear& fused, const std::string& prefix, const char* const (&names)[N],
                 const LinearVisitor& visit) {
  for (size_t i = 0; i < N; ++i) visit(prefix + names[i], fused.part(i));
}

// The parts replaced one by one, fused again when the original was asked to fuse.
template <size_t N>
FusedLinear transform_parts(const FusedLinear& fused, const std::string& prefix,
                            const char* const (&names)[N], const LinearTransform& transform) {
  std::vector<QuantizedLinear> parts;
  for (size_t i = 0; i < N; ++i) parts.push_back(transform(prefix + names[i], fused.part(i)));
  return FusedLinear(std::move(parts), fused.fuse_requested());
}

}  // namespace

void Attention::for_each_linear(const std::string& prefix, const LinearVisitor& visit) const {
  visit_parts(qkv_proj_, prefix, kQkvNames, visit);
  visit(prefix + "o_proj", o_proj_);
}

void Attention::transform_linears(const std::string& prefix, const LinearTransform& transform) {
  FusedLinear qkv = transform_parts(qkv_proj_, prefix, kQkvNames, transform);
  QuantizedLinear o = transform(prefix + "o_proj", o_proj_);
  qkv_proj_ = std::move(qkv);
  o_proj_ = std::move(o);
  check_projections();
}

void MLP::for_each_linear(const std::string& prefix, const LinearVisitor& visit) const {
  visit_parts(gate_up_proj_, prefix, kGateUpNames, visit);
  visit(prefix + "down_proj", down_proj_);
}

void MLP::transform_linears(const std::string& prefix, const LinearTransform& transform) {
  FusedLinear gate_up = transform_parts(gate_up_proj_, prefix, kGateUpNames, transform);
  QuantizedLinear down = transform(prefix + "down_proj", down_proj_);
  gate_up_proj_ = std::move(gate_up);
  down_proj_ = std::move(down);
  check_projections();
}

void TransformerBlock::for_each_linear(const std::string& prefix, const LinearVisitor& visit) const {
  self_attn_.for_each_linear(prefix + "self_attn.", visit);
  if (moe_ == nullptr) mlp_.for_each_linear(prefix + "mlp.", visit);
}

void TransformerBlock::transform_linears(const std::string& prefix, const LinearTransform& transform) {
  MARLIN_CHECK(moe_ == nullptr, "TransformerBlock::transform_linears", prefix,
               " is an MoE layer: its experts cannot be replaced in place (load the model with "
               "ModelLoadOptions::bits instead)");
  self_attn_.transform_linears(prefix + "self_attn.", transform);
  mlp_.transform_linears(prefix + "mlp.", transform);
}

}  // namespace marlin
