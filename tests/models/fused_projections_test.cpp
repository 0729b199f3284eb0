// Fused QKV and gate+up in whole models: on the CPU the fused model's logits are bit for bit the
// unfused model's (prefill and cached decode, every format), save_quantized writes exactly the
// tensors an unfused model writes under the original names, and load_quantized fuses again.
// Also the fused residual-add + norm chain between blocks against TransformerBlock::forward.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/safetensors.h"
#include "models/llama.h"
#include "model_test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

using testing::fixture_dir;

// A fresh scratch directory marlin_fused_<tag>, removed afterwards.
struct TempDir : testing::TempDir {
  explicit TempDir(const std::string& tag) : testing::TempDir("marlin_fused_" + tag) {}
};

const LlamaModel& llama(const CausalLM& m) { return dynamic_cast<const LlamaModel&>(m); }

std::unique_ptr<CausalLM> load(const std::string& dir, int bits, bool fuse, DType dtype = DType::f32) {
  ModelLoadOptions options;
  options.bits = bits;
  options.group_size = 32;
  options.fuse_projections = fuse;
  options.dtype = dtype;
  return load_model(dir, options);
}

// Logits of the prompt, then of 6 greedy tokens decoded one at a time through a cache.
std::vector<float> prefill_and_decode(const CausalLM& model, const Tensor& prompt) {
  KVCache cache = model.make_cache(prompt.numel() + 8);
  Tensor logits = model.forward(prompt, &cache);
  std::vector<float> all = logits.to_float_vector();
  for (int step = 0; step < 6; ++step) {
    logits = model.forward(testing::ids_tensor({testing::argmax_last_row(logits)}), &cache);
    const std::vector<float> step_logits = logits.to_float_vector();
    all.insert(all.end(), step_logits.begin(), step_logits.end());
  }
  return all;
}

class FusedModelTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FusedModelTest, LogitsBitIdenticalToUnfused) {
  const std::string dir = fixture_dir(GetParam());
  const Tensor prompt = load_npy(dir + "/prompt_ids.npy");
  for (const DType dtype : {DType::f32, DType::bf16})
    for (const int bits : {16, 8, 4, 2}) {
      const auto fused = load(dir, bits, true, dtype);
      const auto unfused = load(dir, bits, false, dtype);
      for (const TransformerBlock& b : llama(*fused).layers()) {
        ASSERT_TRUE(b.self_attn().qkv_proj().fused());
        ASSERT_TRUE(b.mlp().gate_up_proj().fused());
      }
      for (const TransformerBlock& b : llama(*unfused).layers()) ASSERT_FALSE(b.self_attn().qkv_proj().fused());
      EXPECT_EQ(prefill_and_decode(*fused, prompt), prefill_and_decode(*unfused, prompt))
          << GetParam() << " " << dtype_name(dtype) << " bits " << bits;
      // A batch of two sequences goes through the strided head views of each row.
      const Tensor batch = Tensor::from_vector(std::vector<int32_t>{1, 5, 9, 2, 7, 3}, {2, 3}, DType::i32);
      EXPECT_EQ(fused->forward(batch).to_float_vector(), unfused->forward(batch).to_float_vector())
          << GetParam() << " batch";
    }
}

// Every tensor of two checkpoints, by name, byte for byte.
void expect_same_checkpoints(const std::string& a, const std::string& b, const std::string& what) {
  const SafetensorsCheckpoint x = SafetensorsCheckpoint::open(a), y = SafetensorsCheckpoint::open(b);
  std::vector<std::string> xn = x.names(), yn = y.names();
  std::sort(xn.begin(), xn.end());
  std::sort(yn.begin(), yn.end());
  ASSERT_EQ(xn, yn) << what;
  for (const std::string& n : xn) {
    const Tensor s = x.tensor(n).contiguous(), t = y.tensor(n).contiguous();
    EXPECT_TRUE(s.dtype() == t.dtype() && s.shape() == t.shape() &&
                std::memcmp(s.data_ptr(), t.data_ptr(), s.nbytes()) == 0)
        << what << ": " << n;
  }
}

TEST_P(FusedModelTest, SavesTheOriginalNamesAndLoadsFusedAgain) {
  const std::string dir = fixture_dir(GetParam());
  const Tensor prompt = load_npy(dir + "/prompt_ids.npy");
  for (const int bits : {16, 4}) {
    const std::string tag = std::string(GetParam()) + "_" + std::to_string(bits);
    TempDir fused_dir("f_" + tag), unfused_dir("u_" + tag);
    const auto fused = load(dir, bits, true);
    save_quantized(*fused, fused_dir.str());
    save_quantized(*load(dir, bits, false), unfused_dir.str());
    expect_same_checkpoints(fused_dir.str(), unfused_dir.str(), tag);
    for (const std::string p : {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"})
      EXPECT_TRUE(SafetensorsCheckpoint::open(fused_dir.str()).has(p + (bits == 16 ? ".weight" : ".weight_packed")));
    std::ifstream a(fused_dir.path() / "config.json"), b(unfused_dir.path() / "config.json");
    EXPECT_EQ(nlohmann::json::parse(a), nlohmann::json::parse(b)) << tag;

    const auto loaded = load_quantized(fused_dir.str());
    for (const TransformerBlock& blk : llama(*loaded).layers()) {
      EXPECT_TRUE(blk.self_attn().qkv_proj().fused()) << tag;
      EXPECT_TRUE(blk.mlp().gate_up_proj().fused()) << tag;
    }
    EXPECT_EQ(loaded->forward(prompt).to_float_vector(), fused->forward(prompt).to_float_vector()) << tag;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, FusedModelTest, ::testing::ValuesIn(kFixtures));

// forward_fused chains the blocks with add_rms_norm; it must equal forward() followed by the
// next norm, residual stream included.
TEST(FusedEpilogue, ForwardFusedEqualsForwardThenNorm) {
  testing::PoisonScope poison;
  const auto model = load(fixture_dir("qwen3"), 4, true);
  const LlamaModel& m = llama(*model);
  const TransformerBlock& block = m.layers()[0];
  const Tensor positions = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}, {10}, DType::i32);
  const Tensor h = testing::random_tensor({2, 5, 64}, DType::f32, 3);
  Tensor h_ref = h.clone(), h_fused = h.clone();
  const Tensor ref = m.norm().forward(block.forward(h_ref, positions));
  const Tensor out =
      block.forward_fused(h_fused, block.input_layernorm().forward(h_fused), positions, nullptr, m.norm());
  EXPECT_EQ(h_fused.to_float_vector(), h_ref.to_float_vector());
  EXPECT_EQ(out.to_float_vector(), ref.to_float_vector());
}

}  // namespace
}  // namespace marlin
