// The CPU side of the graph-ready decode loop: ops::argmax_rows and ops::cast as the references
// of their CUDA kernels, DecodeGraph refusing a CPU model, and generate's cuda_graph switch
// (which never changes a CPU run).
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "marlin/decode_graph.h"
#include "marlin/generate.h"
#include "marlin/npy.h"
#include "marlin/ops_nn.h"
#include "marlin/sampler.h"
#include "test_util.h"

namespace marlin {
namespace {

TEST(ArgmaxRows, EachRowsGreedyChoice) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Ties to the smaller id; NaN never wins; a row without a number gives V.
  const std::vector<float> v{1, 5, 5, 0, nan, -2, nan, -1, nan, nan, nan, nan};
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor logits = Tensor::from_vector(v, {3, 1, 4}, DType::f32).to(dt);
    const Tensor ids = ops::argmax_rows(logits);
    EXPECT_EQ(ids.dtype(), DType::i32);
    EXPECT_EQ(ids.shape(), (Shape{3}));
    EXPECT_EQ(ids.to_float_vector(), (std::vector<float>{1, 3, 4})) << dtype_name(dt);
    Sampler sampler(4, 1);
    EXPECT_EQ(sampler.argmax(logits.select(0, 0).select(0, 0)), 1);
  }
  EXPECT_NE(testing::error_message([] { ops::argmax_rows(Tensor::zeros({2, 3}, DType::i32)); })
                .find("[argmax_rows]"),
            std::string::npos);
}

TEST(Cast, IsTensorToOnTheCpu) {
  const Tensor x = testing::random_tensor({2, 3, 5}, DType::bf16, 3);
  EXPECT_EQ(ops::cast(x, DType::f32).to_float_vector(), x.to_float_vector());
  EXPECT_EQ(ops::cast(x.transpose(0, 1), DType::f32).to_float_vector(),
            x.transpose(0, 1).contiguous().to_float_vector());
  EXPECT_TRUE(ops::cast(x.transpose(0, 1), DType::bf16).is_contiguous());
  EXPECT_NE(testing::error_message([&] { ops::cast(x, DType::i32); }).find("[cast]"), std::string::npos);
}

TEST(DecodeGraph, NeedsACapturableModelOnCuda) {
  ModelLoadOptions options;
  options.dtype = DType::f32;
  const auto model = load_model(std::string(MARLIN_TEST_FIXTURES) + "/models/qwen3", options);
  EXPECT_FALSE(DecodeGraph::supported(*model));
  KVCache cache = model->make_cache(8);
  const std::string e = testing::error_message([&] { DecodeGraph graph(*model, cache); });
  EXPECT_NE(e.find("[DecodeGraph]"), std::string::npos) << e;

  // On the CPU the switch changes nothing: the same tokens, no graph.
  GenerationConfig c;
  c.max_new_tokens = 6;
  c.do_sample = false;
  c.eos_token_id = {};
  GenerationStats on, off;
  c.cuda_graph = true;
  const auto a = generate(*model, {{1, 2, 3}, {4, 5}}, c, nullptr, &on);
  c.cuda_graph = false;
  const auto b = generate(*model, {{1, 2, 3}, {4, 5}}, c, nullptr, &off);
  EXPECT_EQ(a, b);
  EXPECT_FALSE(on.cuda_graph);
  EXPECT_EQ(on.capture_ms, 0.0);
}

}  // namespace
}  // namespace marlin
