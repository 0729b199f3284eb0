// The decode step as a CUDA graph: generate with graphs gives the eager path's greedy tokens for
// every llama-family fixture (bf16; batch 1 and rows of 3, 12, 7 tokens; dense and MoE at 4
// bits), DecodeGraph's replays give the eager steps' logits, its checks, a wait inside a capture
// named and the capture ended, the allocator's capture pools, and the device cast and argmax.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/cuda_graph.h"
#include "cuda/cuda_test.h"
#include "marlin/allocator.h"
#include "marlin/decode_graph.h"
#include "marlin/generate.h"
#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/ops_nn.h"
#include "marlin/sampler.h"
#include "marlin/stream.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::error_message;
using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class DecodeGraphCuda : public testing::CudaTest {};

const char* const kDense[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::unique_ptr<CausalLM> load_on_gpu(const std::string& name, int bits = 16) {
  ModelLoadOptions options;
  options.device = Device::cuda(0);
  options.dtype = DType::bf16;
  options.bits = bits;
  options.group_size = 32;  // the fixtures' 32- and 64-wide layers
  return load_model(fixture_dir(name), options);
}

// Rows of the given lengths cut from the fixture's prompt, each from another offset.
std::vector<std::vector<int64_t>> prompts_of(const std::string& name, const std::vector<int64_t>& lengths) {
  const Tensor p = load_npy(fixture_dir(name) + "/prompt_ids.npy");
  const int32_t* ids = p.data<int32_t>();
  std::vector<std::vector<int64_t>> rows;
  for (size_t b = 0; b < lengths.size(); ++b) {
    rows.emplace_back();
    for (int64_t t = 0; t < lengths[b]; ++t) rows.back().push_back(ids[(3 * b + t) % p.numel()]);
  }
  return rows;
}

GenerationConfig greedy(int64_t n, bool graph) {
  GenerationConfig c;
  c.max_new_tokens = n;
  c.do_sample = false;
  c.repetition_penalty = 1.0f;
  c.eos_token_id = {};  // every row runs all n steps
  c.cuda_graph = graph;
  return c;
}

void expect_graph_matches_eager(const CausalLM& model, const std::string& name, const std::string& what) {
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{12}, std::vector<int64_t>{3, 12, 7}}) {
    const auto prompts = prompts_of(name, lengths);
    GenerationStats on, off;
    const auto eager = generate(model, prompts, greedy(16, false), nullptr, &off);
    const auto graphed = generate(model, prompts, greedy(16, true), nullptr, &on);
    EXPECT_TRUE(on.cuda_graph) << what;
    EXPECT_FALSE(off.cuda_graph) << what;
    EXPECT_EQ(graphed, eager) << what << ", batch " << lengths.size();
  }
}

TEST_F(DecodeGraphCuda, GenerateWithGraphsGivesTheEagerTokensBf16) {
  for (const char* name : kDense) {
    const auto model = load_on_gpu(name);
    ASSERT_TRUE(DecodeGraph::supported(*model)) << name;
    expect_graph_matches_eager(*model, name, name);
  }
}

// Quantized GEMMs (split-K scratch) and the device-planned MoE layers in a graph.
TEST_F(DecodeGraphCuda, GenerateWithGraphsGivesTheEagerTokensQuantizedAndMoe) {
  for (const char* name : {"llama_gqa", "qwen3", "qwen3_moe", "mixtral"}) {
    const auto model = load_on_gpu(name, 4);
    ASSERT_TRUE(DecodeGraph::supported(*model)) << name;
    expect_graph_matches_eager(*model, name, std::string(name) + " at 4 bits");
  }
  // 16-bit experts route through the host: such a model runs its steps eagerly.
  EXPECT_FALSE(DecodeGraph::supported(*load_on_gpu("qwen3_moe")));
}

// The MLA models: absorbed attention over the latent cache, MoE layers (group-limited routing in
// deepseek_v3), the dense first layers, and deepseek_v2's plain q_proj, in a graph.
TEST_F(DecodeGraphCuda, GenerateWithGraphsGivesTheEagerTokensMla) {
  for (const char* name : {"glm4_moe_lite", "deepseek_v3", "deepseek_v2"}) {
    const auto model = load_on_gpu(name, 4);
    ASSERT_TRUE(DecodeGraph::supported(*model)) << name;
    expect_graph_matches_eager(*model, name, std::string(name) + " at 4 bits");
  }
}

// DecodeGraph against eager steps through a second cache: every step's logits (the first is
// eager, the second captures, the rest replay) and the cache's lengths.
TEST_F(DecodeGraphCuda, ReplaysGiveTheEagerStepsLogits) {
  for (const char* name : {"qwen3", "llama_gqa"}) {
    const auto model = load_on_gpu(name);
    const auto prompts = prompts_of(name, {3, 12, 7});
    const int64_t B = 3, T = 12, steps = 8, V = model->config().vocab_size;
    std::vector<int32_t> flat;
    for (const auto& p : prompts)
      for (int64_t t = 0; t < T; ++t) flat.push_back(static_cast<int32_t>(p[std::min<size_t>(t, p.size() - 1)]));
    KVCache graphed = model->make_cache(T + steps, B), eager = model->make_cache(T + steps, B);
    for (KVCache* c : {&graphed, &eager}) {
      c->begin_step(T, {3, 12, 7});
      model->forward(Tensor::from_vector(flat, {B, T}, DType::i32), c);
    }
    DecodeGraph graph(*model, graphed);
    StreamGuard guard(graph.stream());  // the eager steps too: one stream for all
    for (int64_t step = 0; step < steps; ++step) {
      const std::vector<int64_t> ids{(11 * step + 1) % V, (13 * step + 2) % V, (17 * step + 3) % V};
      const Tensor& got = graph.step(ids);
      const std::vector<int32_t> narrow(ids.begin(), ids.end());
      const Tensor want = model->forward(Tensor::from_vector(narrow, {B, 1}, DType::i32), &eager);
      ASSERT_EQ(got.shape(), want.shape()) << name;
      EXPECT_LT(relative_error(to_double(got), to_double(want)), 1e-5) << name << " step " << step;
      EXPECT_EQ(graph.captured(), step >= 1) << name;
    }
    graph.sync_cache();
    EXPECT_EQ(graphed.row_lengths(), eager.row_lengths()) << name;
    EXPECT_EQ(graphed.row_lengths(), (std::vector<int64_t>{3 + steps, 12 + steps, 7 + steps})) << name;
  }
}

TEST_F(DecodeGraphCuda, ChecksRoomAndIdsBeforeRunning) {
  const auto model = load_on_gpu("qwen3");
  const int64_t V = model->config().vocab_size;
  KVCache cache = model->make_cache(6);
  model->forward(Tensor::from_vector(std::vector<int32_t>{1, 2, 3}, {3}, DType::i32), &cache);
  {
    DecodeGraph graph(*model, cache);
    StreamGuard guard(graph.stream());
    EXPECT_NE(error_message([&] { graph.step({V}); }).find("outside the vocabulary"), std::string::npos);
    EXPECT_NE(error_message([&] { graph.step({1, 2}); }).find("one id per row"), std::string::npos);
    for (int i = 0; i < 3; ++i) graph.step({5});  // positions 3, 4, 5
    const std::string e = error_message([&] { graph.step({5}); });
    EXPECT_NE(e.find("[DecodeGraph] row 0"), std::string::npos) << e;
    EXPECT_NE(e.find("max_seq_len=6"), std::string::npos) << e;
  }
  EXPECT_EQ(cache.row_lengths(), std::vector<int64_t>{6});  // the destructor read them back
  EXPECT_NO_THROW(Tensor::zeros({1 << 20}, DType::f32, gpu).to(Device::cpu()));
}

// A host copy inside a capture is an error naming the op, raised before the copy, and the
// capture is ended: the GPU stays usable (cudaMalloc included) and the next capture works.
TEST_F(DecodeGraphCuda, AWaitInsideACaptureNamesTheOpAndEndsTheCapture) {
  Stream stream = Stream::create(0);
  {
    StreamGuard guard(stream);
    auto s = static_cast<cudaStream_t>(stream.handle);
    const Tensor x = random_tensor({4, 8}, DType::bf16, 1).to(gpu);
    const std::string to_host =
        error_message([&] { CapturedGraph::capture(s, 0, [&] { x.to(Device::cpu()); }, "test"); });
    EXPECT_NE(to_host.find("[Tensor::to] cannot synchronize while a CUDA graph is being captured"),
              std::string::npos) << to_host;
    const std::string to_f32 =
        error_message([&] { CapturedGraph::capture(s, 0, [&] { x.to(DType::f32); }, "test"); });
    EXPECT_NE(to_f32.find("[Tensor::to] cannot synchronize"), std::string::npos) << to_f32;
    const std::string sync =
        error_message([&] { CapturedGraph::capture(s, 0, [&] { stream.synchronize(); }, "test"); });
    EXPECT_NE(sync.find("[Stream::synchronize] cannot synchronize"), std::string::npos) << sync;
    EXPECT_FALSE(is_capturing(stream));
    // A size no earlier test cached: a real cudaMalloc.
    EXPECT_NO_THROW(Tensor::empty({(int64_t{37} << 20) + 3}, DType::u8, gpu));
    Tensor y;
    const CapturedGraph g = CapturedGraph::capture(s, 0, [&] { y = ops::cast(x, DType::f32); }, "test");
    g.launch("test");
    EXPECT_EQ(y.to_float_vector(), x.to_float_vector());
  }
  stream.destroy();
}

// The allocator's capture pool on the device (the bookkeeping is tests/core/block_pool_test).
TEST_F(DecodeGraphCuda, CapturePoolKeepsTheGraphsBuffers) {
  auto& alloc = CudaCachingAllocator::instance();
  const int64_t n = (int64_t{3} << 20) + 17;  // one 4 MiB bucket
  void* before = nullptr;
  {
    Tensor a = Tensor::empty({n}, DType::u8, gpu);
    before = a.data_ptr();
  }  // freed: the shared cache's last block of the bucket
  const uint64_t pool = alloc.begin_capture(0);
  void* t1 = nullptr;
  void* t2 = nullptr;
  Tensor kept;
  {
    Tensor a = Tensor::empty({n}, DType::u8, gpu), b = Tensor::empty({n}, DType::u8, gpu);
    t1 = a.data_ptr();
    t2 = b.data_ptr();
  }  // freed during the capture: into the pool
  EXPECT_EQ(t1, before);
  EXPECT_EQ(alloc.capture_pool_free_bytes(0, pool), 2 * CudaCachingAllocator::round_size(n));
  kept = Tensor::empty({n}, DType::u8, gpu);  // served from the pool first
  EXPECT_TRUE(kept.data_ptr() == t1 || kept.data_ptr() == t2);
  alloc.end_capture(0);
  {
    Tensor other = Tensor::empty({n}, DType::u8, gpu);  // between replays: not the graph's
    EXPECT_NE(other.data_ptr(), t1);
    EXPECT_NE(other.data_ptr(), t2);
  }
  alloc.empty_cache();  // leaves the pool's blocks alone
  EXPECT_EQ(alloc.capture_pool_free_bytes(0, pool), CudaCachingAllocator::round_size(n));
  const size_t held = alloc.stats(0).capture_pool_bytes;
  alloc.release_capture_pool(0, pool);
  EXPECT_EQ(alloc.capture_pool_free_bytes(0, pool), 0u);
  EXPECT_EQ(alloc.stats(0).capture_pool_bytes, held - CudaCachingAllocator::round_size(n));
  kept = Tensor();  // freed after the release: the shared cache
  EXPECT_EQ(alloc.stats(0).capture_pool_bytes, held - CudaCachingAllocator::round_size(n));
}

TEST_F(DecodeGraphCuda, CastAndArgmaxRowsMatchTheCpu) {
  for (DType from : {DType::bf16, DType::f16, DType::f32})
    for (DType to : {DType::bf16, DType::f16, DType::f32}) {
      const Tensor x = random_tensor({3, 1, 1000}, from, 7);
      const Tensor got = ops::cast(x.to(gpu), to);
      EXPECT_EQ(got.dtype(), to);
      const bool widening = dtype_size(to) > dtype_size(from) || to == from;
      if (widening) {  // exact
        EXPECT_EQ(got.to_float_vector(), x.to(to).to_float_vector()) << dtype_name(from) << "->" << dtype_name(to);
      } else {  // rounded to nearest even on both; f16 <-> bf16 lose different bits
        EXPECT_LT(relative_error(to_double(got), to_double(x.to(to))), 4e-3) << dtype_name(from) << "->" << dtype_name(to);
      }
    }
  // Ties go to the smaller id, NaN never wins, a row of NaN gives V.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v(4 * 5000, -1.0f);
  v[0 * 5000 + 4000] = 3.0f;
  v[0 * 5000 + 17] = 3.0f;
  v[1 * 5000 + 2] = nan;
  v[1 * 5000 + 4999] = 0.5f;
  for (int i = 0; i < 5000; ++i) v[2 * 5000 + i] = nan;
  v[3 * 5000 + 123] = 9.0f;
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor logits = Tensor::from_vector(v, {4, 5000}, DType::f32).to(dt);
    const std::vector<float> want = ops::argmax_rows(logits).to_float_vector();
    EXPECT_EQ(want, (std::vector<float>{17, 4999, 5000, 123}));
    EXPECT_EQ(ops::argmax_rows(logits.to(gpu)).to_float_vector(), want) << dtype_name(dt);
  }
}

}  // namespace
}  // namespace marlin
