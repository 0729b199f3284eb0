// decode_step_bytes and prefill_flops against hand counts from the configs' shapes, for the
// layouts that change the count: quantized vs 16-bit layers, biases (qwen2), q/k norms and a
// tied lm_head (qwen3), and the batch and cache length; MoE layers (the chosen experts only) and
// MLA layers (absorbed weights, the latent cache); one MoE layer alone (`marlin bench moe`).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/moe.h"
#include "models/deepseek.h"
#include "models/step_cost.h"

namespace marlin {
namespace {

ModelConfig fixture_config(const std::string& name) {
  return load_model_config(std::string(MARLIN_TEST_FIXTURES) + "/models/" + name);
}

// packed u32 [K / P, N] + f16 scales [K / g, N]
int64_t quantized_bytes(int64_t K, int64_t N, int bits, int g) {
  return K * N * bits / 8 + K / g * N * 2;
}

TEST(DecodeStepBytes, MatchesAHandCountOfLlamaGqa) {
  // hidden 64, intermediate 64, 2 layers, heads 2 (kv 1) of 64, vocab 256, untied lm_head.
  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(fixture_config("llama_gqa"), o);
  const auto b = decode_step_bytes(*model, 3, 10.5);
  ASSERT_TRUE(b.has_value());
  // q [64 -> 128], k, v [64 -> 64], o [128 -> 64], gate, up, down [64 -> 64], per layer.
  const int64_t per_layer = quantized_bytes(64, 128, 4, 32) + 2 * quantized_bytes(64, 64, 4, 32) +
                            quantized_bytes(128, 64, 4, 32) + 3 * quantized_bytes(64, 64, 4, 32);
  EXPECT_EQ(per_layer, 20736);
  EXPECT_EQ(b->quantized_weights, 2 * per_layer);
  EXPECT_EQ(b->dense_weights, 256 * 64 * 2);                 // lm_head, bf16
  EXPECT_EQ(b->norm_weights, (2 * 2 + 1) * 64 * 2);          // 2 per layer + final
  EXPECT_EQ(b->embedding_rows, 3 * 64 * 2);                  // one row per batch row
  EXPECT_EQ(b->kv_cache, static_cast<int64_t>(2 * 3 * 2 * 1 * 64 * 10.5 * 2));  // layers*B*(k,v)*Hkv*D*pos*2
  EXPECT_EQ(b->total(), b->weights() + b->kv_cache);
  EXPECT_EQ(b->weights(), 2 * per_layer + 256 * 64 * 2 + 5 * 64 * 2 + 3 * 64 * 2);
}

TEST(DecodeStepBytes, CountsBiasesQkNormsAndSixteenBitLayers) {
  // qwen2: q/k/v biases, kept f32 [out]; 16-bit f32 weights on the CPU.
  const auto qwen2 = load_synthetic_model(fixture_config("qwen2"));
  const auto b2 = decode_step_bytes(*qwen2, 1, 4);
  ASSERT_TRUE(b2.has_value());
  EXPECT_EQ(b2->quantized_weights, 0);
  const int64_t linear_params = 2 * (64 * 128 + 2 * 64 * 64 + 128 * 64 + 3 * 64 * 64) + 64 * 256;
  const int64_t bias_values = 2 * (128 + 64 + 64);
  EXPECT_EQ(b2->dense_weights, (linear_params + bias_values) * 4);
  // qwen3: 4 heads (kv 2) of 64, q/k norms per layer, tied lm_head (still read as its own
  // [K, N] copy).
  ModelLoadOptions o;
  o.bits = 8;
  o.group_size = 64;
  const auto qwen3 = load_synthetic_model(fixture_config("qwen3"), o);
  const auto b3 = decode_step_bytes(*qwen3, 1, 4);
  ASSERT_TRUE(b3.has_value());
  EXPECT_EQ(b3->quantized_weights,
            2 * (quantized_bytes(64, 256, 8, 64) + 2 * quantized_bytes(64, 128, 8, 64) +
                 quantized_bytes(256, 64, 8, 64) + 3 * quantized_bytes(64, 64, 8, 64)));
  EXPECT_EQ(b3->dense_weights, 256 * 64 * 4);
  EXPECT_EQ(b3->norm_weights, (2 * (2 * 64 + 2 * 64) + 64) * 4);
  EXPECT_EQ(b3->kv_cache, 2 * 1 * 2 * 2 * 64 * 4 * 4);
}

// glm4_moe_lite: hidden 64, 4 heads, q_lora 32, kv_lora 64, nope 24, rope 16, v 32; layer 0
// dense (intermediate 96), layers 1-2 MoE (8 experts of 32, top 2, one shared expert, sigmoid
// router with a score bias); vocab 256, untied lm_head. FP4, group 32, bf16.
constexpr int64_t kGlmExpert = 2 * 1152 + 1152;  // gate, up [64 -> 32], down [32 -> 64]

int64_t glm_attention_bytes() {
  return quantized_bytes(64, 32, 4, 32) + quantized_bytes(32, 4 * 40, 4, 32) +  // q_a, q_b
         quantized_bytes(64, 80, 4, 32) +                                       // kv_a
         (4 * 24 * 64 + 4 * 64 * 32) * 2 +  // absorbed W_UK, W_UV (bf16), not kv_b_proj
         quantized_bytes(128, 64, 4, 32);   // o
}

TEST(DecodeStepBytes, MatchesAHandCountOfAnMlaMoeModel) {
  EXPECT_EQ(quantized_bytes(64, 32, 4, 32), 1152);
  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(fixture_config("glm4_moe_lite"), o);
  const auto b = decode_step_bytes(*model, 1, 7.5);
  ASSERT_TRUE(b.has_value());
  const int64_t absorbed = (4 * 24 * 64 + 4 * 64 * 32) * 2;
  const int64_t dense_mlp = 2 * quantized_bytes(64, 96, 4, 32) + quantized_bytes(96, 64, 4, 32);
  const int64_t moe_layer = kGlmExpert +      // the shared expert
                            2 * kGlmExpert;   // the 2 chosen of 8 routed experts
  EXPECT_EQ(b->quantized_weights, 3 * (glm_attention_bytes() - absorbed) + dense_mlp + 2 * moe_layer);
  const int64_t router = 8 * 64 * 4 + 8 * 4;  // f32 gate.weight and e_score_correction_bias
  EXPECT_EQ(b->dense_weights, 3 * absorbed + 2 * router + 256 * 64 * 2);  // + bf16 lm_head
  EXPECT_EQ(b->routed_experts, 2 * 2 * kGlmExpert);
  EXPECT_EQ(b->norm_weights, (3 * (64 + 64 + 32 + 64) + 64) * 2);  // + q_a / kv_a norms
  EXPECT_EQ(b->embedding_rows, 64 * 2);
  EXPECT_EQ(b->kv_cache, static_cast<int64_t>(3 * 80 * 2 * 7.5));  // latent + rope, one row
  EXPECT_EQ(b->total(), b->weights() + b->kv_cache);

  // Three rows choose 8 * (1 - (3/4)^3) = 4.625 distinct experts per layer on average.
  const auto b3 = decode_step_bytes(*model, 3, 7.5);
  ASSERT_TRUE(b3.has_value());
  EXPECT_EQ(b3->routed_experts, 2 * kGlmExpert * 4625 / 1000);
  EXPECT_EQ(b3->kv_cache, 3 * b->kv_cache);
  // Prefill: q_a [64 -> 32], q_b [32 -> 4 x 40], kv_a [64 -> 80], kv_b [64 -> 4 x 56] (the
  // expanded form), o [128 -> 64] per layer; the dense layer's MLP (64 -> 96 -> 64); per MoE
  // layer the router (8 x 64), 2 chosen experts and the shared one (3 x 64 x 32 each); lm_head.
  const double attention_params = 64 * 32 + 32 * 160 + 64 * 80 + 64 * 224 + 128 * 64;
  const double per_token = 3 * attention_params + 3 * 64 * 96 + 2 * (8 * 64 + 3 * (3 * 64 * 32)) + 64 * 256;
  EXPECT_EQ(per_token, 177152);
  const double scores = 3 * 2.0 * 4 * (40 + 32) * (4 * 5 / 2);  // layers x 2 x heads x dims x pairs
  const auto flops = prefill_flops(*model, 1, 4);
  ASSERT_TRUE(flops.has_value());
  EXPECT_DOUBLE_EQ(*flops, 2.0 * 4 * per_token + scores);
}

TEST(DecodeStepBytes, ExpertsCountAtTheirOwnWidths) {
  // glm4_moe_lite with expert 0 of each MoE layer kept bf16, the others FP4: the chosen two are
  // counted at the layer's mean expert bytes.
  ModelLoadOptions o;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(fixture_config("glm4_moe_lite"), o);
  quantize_linear_layers(*model, 4, 32, std::vector<std::string>{"lm_head", "mlp.experts.0."});
  const auto b = decode_step_bytes(*model, 1, 1);
  ASSERT_TRUE(b.has_value());
  const int64_t bf16_expert = 3 * 64 * 32 * 2;
  EXPECT_EQ(b->routed_experts, 2 * (bf16_expert + 7 * kGlmExpert) * 2 / 8);
}

TEST(DecodeStepBytes, QueryWithoutLoraAndLlamaFamilyMoe) {
  // deepseek_v2: a plain q_proj [64 -> 4 * 24], kv_lora 32, rope 8 (a 40-value latent row).
  ModelLoadOptions o;
  o.bits = 8;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto v2 = load_synthetic_model(fixture_config("deepseek_v2"), o);
  const auto b2 = decode_step_bytes(*v2, 1, 2);
  ASSERT_TRUE(b2.has_value());
  EXPECT_EQ(b2->kv_cache, 3 * 40 * 2 * 2);
  EXPECT_EQ(b2->norm_weights, (3 * (64 + 64 + 32) + 64) * 2);  // no q_a_layernorm
  // qwen3_moe through LlamaModel: layer 0 dense, layer 1 8 experts of 32, top 2, no shared.
  const auto q = load_synthetic_model(fixture_config("qwen3_moe"), o);
  const auto bq = decode_step_bytes(*q, 1, 2);
  ASSERT_TRUE(bq.has_value());
  EXPECT_EQ(bq->routed_experts, 2 * (2 * quantized_bytes(64, 32, 8, 32) + quantized_bytes(32, 64, 8, 32)));
  EXPECT_EQ(bq->kv_cache, 2 * 2 * 2 * 64 * 2 * 2);  // layers * (k, v) * Hkv * D * pos * bf16
}

TEST(MoeCallBytes, OneLayerAgainstAHandCount) {
  // `marlin bench moe`'s numerator: glm4_moe_lite's MoE alone (load_synthetic_moe), FP4, group 32.
  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto moe = load_synthetic_moe(fixture_config("glm4_moe_lite"), o);
  const int64_t router = 8 * 64 * 4 + 8 * 4;  // f32 gate.weight and e_score_correction_bias
  const DecodeStepBytes one = moe_call_bytes(*moe, 2);  // one token: its top 2 of 8
  EXPECT_EQ(one.quantized_weights, kGlmExpert + 2 * kGlmExpert);  // shared + the chosen two
  EXPECT_EQ(one.dense_weights, router);
  EXPECT_EQ(one.routed_experts, 2 * kGlmExpert);
  // A measured mean of 5.5 distinct experts over many calls counts 5.5 experts' bytes.
  EXPECT_EQ(moe_call_bytes(*moe, 5.5).routed_experts, 11 * kGlmExpert / 2);
  EXPECT_EQ(moe_call_bytes(*moe, 8).quantized_weights, 9 * kGlmExpert);

  EXPECT_DOUBLE_EQ(expected_distinct_experts(8, 2, 1), 2.0);
  EXPECT_DOUBLE_EQ(expected_distinct_experts(8, 2, 3), 4.625);  // 8 (1 - (3/4)^3)
  EXPECT_DOUBLE_EQ(expected_distinct_experts(4, 8, 1), 4.0);    // top_k capped at E
  EXPECT_NEAR(expected_distinct_experts(64, 4, 64), 64 * (1 - std::pow(60.0 / 64, 64)), 1e-9);
  EXPECT_LT(expected_distinct_experts(64, 4, 64), 64.0);
}

TEST(LoadSyntheticMoe, IsTheModelsFirstMoeLayer) {
  // The benchmark's layer must be the one load_synthetic_model builds (same names, same seed):
  // layer 1 of glm4_moe_lite (layer 0 is dense).
  ModelLoadOptions o;
  o.bits = 8;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const ModelConfig c = fixture_config("glm4_moe_lite");
  const auto model = load_synthetic_model(c, o, 5);
  const auto* deepseek = dynamic_cast<const DeepseekModel*>(model.get());
  ASSERT_NE(deepseek, nullptr);
  const MoE* layer = deepseek->layers()[1].moe();
  ASSERT_NE(layer, nullptr);
  const auto moe = load_synthetic_moe(c, o, 5);
  const auto same = [](const Tensor& a, const Tensor& b) {
    const Tensor x = a.contiguous(), y = b.contiguous();
    return x.nbytes() == y.nbytes() && std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
  };
  EXPECT_TRUE(same(moe->router_weight(), layer->router_weight()));
  ASSERT_EQ(moe->experts().size(), 8u);
  for (size_t e : {size_t{0}, size_t{7}}) {
    EXPECT_TRUE(same(moe->experts()[e].down_proj().qweight().packed, layer->experts()[e].down_proj().qweight().packed)) << e;
    EXPECT_TRUE(same(moe->experts()[e].gate_proj().qweight().scales, layer->experts()[e].gate_proj().qweight().scales)) << e;
  }
  EXPECT_TRUE(same(moe->shared_experts().up_proj().qweight().packed,
                   layer->shared_experts().up_proj().qweight().packed));
  // Another seed: other weights.
  EXPECT_FALSE(same(load_synthetic_moe(c, o, 6)->router_weight(), layer->router_weight()));
  EXPECT_THROW(load_synthetic_moe(fixture_config("llama_gqa"), o), Error);
}

TEST(ResidentBytes, CountEveryExpertAndTheCacheAsAllocated) {
  ModelLoadOptions o;
  o.bits = 4;
  o.group_size = 32;
  o.dtype = DType::bf16;
  const auto model = load_synthetic_model(fixture_config("glm4_moe_lite"), o);
  const auto w = resident_weight_bytes(*model);
  ASSERT_TRUE(w.has_value());
  // Per layer: the decode-step attention plus kv_b_proj [64 -> 4 * (24 + 32)], resident too.
  const int64_t attention = glm_attention_bytes() + quantized_bytes(64, 224, 4, 32);
  const int64_t dense_mlp = 2 * quantized_bytes(64, 96, 4, 32) + quantized_bytes(96, 64, 4, 32);
  const int64_t moe_layer = 9 * kGlmExpert + 8 * 64 * 4 + 8 * 4;  // 8 routed + shared, router
  const int64_t norms = (3 * (64 + 64 + 32 + 64) + 64) * 2;
  EXPECT_EQ(*w, 3 * attention + dense_mlp + 2 * moe_layer + norms + 2 * 256 * 64 * 2);
  // The cache as make_cache allocates it: one latent row of 80 bf16 values per position.
  const auto llama = load_synthetic_model(fixture_config("llama_gqa"), o);
  for (const CausalLM* m : {model.get(), llama.get()}) {
    const KVCache cache = m->make_cache(12, 3);
    int64_t allocated = 0;
    for (int64_t l = 0; l < m->config().num_hidden_layers; ++l) {
      allocated += static_cast<int64_t>(cache.keys(l).nbytes());
      if (!cache.config().keys_only) allocated += static_cast<int64_t>(cache.values(l).nbytes());
    }
    EXPECT_EQ(kv_cache_bytes(*m, 12, 3), allocated) << m->config().source;
  }
  EXPECT_EQ(kv_cache_bytes(*model, 12, 3), 3 * 3 * 12 * 80 * 2);
}

TEST(PrefillFlops, MatchesAHandCount) {
  const auto model = load_synthetic_model(fixture_config("llama_gqa"));
  const auto f = prefill_flops(*model, 2, 8);
  ASSERT_TRUE(f.has_value());
  const double params = 2 * (64 * 128 + 2 * 64 * 64 + 128 * 64 + 3 * 64 * 64) + 64 * 256;
  const double attention = 2 * 4.0 * 2 * 2 * 64 * (8 * 9 / 2);  // layers * 4 * B * Hq * D * pairs
  EXPECT_DOUBLE_EQ(*f, 2.0 * 16 * params + attention);
}

}  // namespace
}  // namespace marlin
