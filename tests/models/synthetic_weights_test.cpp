// SyntheticWeights and load_synthetic_model: every llama-family architecture loads from random
// weights with the config's shapes, deterministically per seed, with Transformers' initial
// statistics; linears quantized in place equal the host path bit for bit; errors are clear.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/nn.h"
#include "models/llama.h"
#include "models/weight_source.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::error_message;

ModelConfig fixture_config(const std::string& name) {
  return load_model_config(std::string(MARLIN_TEST_FIXTURES) + "/models/" + name);
}

Tensor ids(std::vector<int32_t> v) {
  const auto n = static_cast<int64_t>(v.size());
  return Tensor::from_vector(v, {n}, DType::i32);
}

double stddev_of(const Tensor& t) {
  const std::vector<float> v = t.to_float_vector();
  double s = 0, s2 = 0;
  for (float x : v) s += x, s2 += double(x) * x;
  const double mean = s / double(v.size());
  return std::sqrt(s2 / double(v.size()) - mean * mean);
}

class SyntheticArchitectureTest : public ::testing::TestWithParam<const char*> {};

// The model runs (finite logits of the right shape) at 16 and 4 bits, and decoding through the
// cache gives the logits of the full forward: the layers got tensors of the right shapes.
TEST_P(SyntheticArchitectureTest, LoadsAndDecodesConsistently) {
  const ModelConfig config = fixture_config(GetParam());
  for (int bits : {16, 4}) {
    SCOPED_TRACE("bits " + std::to_string(bits));
    ModelLoadOptions o;
    o.bits = bits;
    o.group_size = 32;
    const auto model = load_synthetic_model(config, o, 7);
    const Tensor prompt = ids({3, 17, 250, 9, 42});
    const Tensor full = model->forward(prompt);
    ASSERT_EQ(full.shape(), (Shape{5, config.vocab_size}));
    const std::vector<float> f = full.to_float_vector();
    for (float x : f) ASSERT_TRUE(std::isfinite(x));

    KVCache cache = model->make_cache(8);
    model->forward(ids({3, 17, 250}), &cache);
    model->forward(ids({9}), &cache);
    const std::vector<float> last = model->forward(ids({42}), &cache).to_float_vector();
    const int64_t V = config.vocab_size;
    double num = 0, den = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double ref = f[static_cast<size_t>(4 * V + v)];
      num += (last[static_cast<size_t>(v)] - ref) * (last[static_cast<size_t>(v)] - ref);
      den += ref * ref;
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SyntheticArchitectureTest,
                         ::testing::Values("llama_gqa", "llama_tied", "qwen2", "qwen3"));

TEST(SyntheticWeights, SameSeedSameModelOtherSeedOtherModel) {
  const ModelConfig config = fixture_config("llama_gqa");
  const Tensor prompt = ids({1, 2, 3});
  const std::vector<float> a = load_synthetic_model(config, {}, 1)->forward(prompt).to_float_vector();
  const std::vector<float> b = load_synthetic_model(config, {}, 1)->forward(prompt).to_float_vector();
  const std::vector<float> c = load_synthetic_model(config, {}, 2)->forward(prompt).to_float_vector();
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// Transformers' initialization: weights N(0, initializer_range^2), RMSNorm weights 1, biases 0.
TEST(SyntheticWeights, HasTheInitialStatisticsOfTransformers) {
  const ModelConfig config = fixture_config("qwen2");  // initializer_range 0.15, q/k/v biases
  const SyntheticWeights w(config, Device::cpu(), DType::f32, 3);
  EXPECT_FLOAT_EQ(w.stddev(), 0.15f);
  const Tensor up = w.get("model.layers.1.mlp.up_proj.weight", {64, 64});
  EXPECT_EQ(up.shape(), (Shape{64, 64}));
  EXPECT_NEAR(stddev_of(up), 0.15, 0.015);
  EXPECT_NEAR(stddev_of(w.get("model.embed_tokens.weight", {256, 64})), 0.15, 0.01);
  for (float x : w.get("model.layers.0.input_layernorm.weight", {64}).to_float_vector())
    ASSERT_EQ(x, 1.0f);
  for (float x : w.get("model.layers.0.self_attn.q_proj.bias", {128}).to_float_vector())
    ASSERT_EQ(x, 0.0f);
  // Different tensors get different values; the same name the same ones.
  const std::vector<float> gate = w.get("model.layers.1.mlp.gate_proj.weight", {64, 64}).to_float_vector();
  EXPECT_NE(gate, up.to_float_vector());
  EXPECT_EQ(w.get("model.layers.1.mlp.up_proj.weight", {64, 64}).to_float_vector(),
            up.to_float_vector());
}

// A synthetic linear weight is quantized where it lies; the result must equal the host path's
// (the one a checkpoint's tensor takes) bit for bit, at every width.
TEST(SyntheticWeights, InPlaceQuantizationEqualsTheHostPath) {
  const ModelConfig config = fixture_config("llama_gqa");
  for (DType dtype : {DType::f32, DType::bf16}) {
    const SyntheticWeights w(config, Device::cpu(), dtype, 5);
    const Tensor weight = w.get("model.layers.0.self_attn.q_proj.weight", {96, 64});
    ASSERT_FALSE(weight.is_contiguous());
    const Tensor copy = weight.contiguous();  // [out, in] row-major, as a checkpoint holds it
    const LayerPlacement placement{Device::cpu(), dtype};
    for (int bits : {8, 4, 2}) {
      SCOPED_TRACE("bits " + std::to_string(bits));
      const QuantizedLinear a(weight, {}, bits, 32, placement), b(copy, {}, bits, 32, placement);
      EXPECT_EQ(a.qweight().packed.to_float_vector(), b.qweight().packed.to_float_vector());
      EXPECT_EQ(a.qweight().scales.to_float_vector(), b.qweight().scales.to_float_vector());
    }
    const QuantizedLinear a(weight, {}, 16, 32, placement), b(copy, {}, 16, 32, placement);
    EXPECT_EQ(a.weight().to_float_vector(), b.weight().to_float_vector());
  }
}

TEST(SyntheticWeights, HoldsNoPackedTensorsAndSaysSo) {
  const ModelConfig config = fixture_config("llama_gqa");
  const SyntheticWeights w(config, Device::cpu(), DType::f32);
  EXPECT_TRUE(w.has("model.layers.0.mlp.up_proj.weight"));
  EXPECT_FALSE(w.has("model.layers.0.mlp.up_proj.weight_packed"));
  EXPECT_FALSE(w.has("model.layers.0.mlp.up_proj.weight_scale"));
  EXPECT_FALSE(w.has("model.layers.1.mlp.experts.gate_up_proj"));  // per-expert tensors only
  EXPECT_TRUE(w.has("model.layers.1.mlp.experts.3.gate_proj.weight"));
  const std::string msg = error_message([&] {
    w.get_exact("lm_head.weight_packed", DType::u32, {8, 256}, "load_quantized");
  });
  EXPECT_NE(msg.find("[load_quantized]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lm_head.weight_packed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("synthetic"), std::string::npos) << msg;
  EXPECT_NE(error_message([] { SyntheticWeights(fixture_config("llama_gqa"), Device::cpu(), DType::u32); })
                .find("dtype"),
            std::string::npos);
}

// A model_type without a registered class is the registry's error, synthetic or not.
TEST(SyntheticWeights, UnsupportedModelTypeNamesTheSupportedOnes) {
  const ModelConfig config =
      load_model_config(std::string(MARLIN_SOURCE_DIR) + "/bench/configs/qwen3-30b-a3b.json");
  for (const std::string& t : supported_causal_lm_types())
    if (t == "qwen3_moe") GTEST_SKIP() << "qwen3_moe is supported now";
  const std::string msg = error_message([&] { load_synthetic_model(config); });
  EXPECT_NE(msg.find("qwen3_moe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
}

}  // namespace
}  // namespace marlin
