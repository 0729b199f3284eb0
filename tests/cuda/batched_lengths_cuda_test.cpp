// Per-row lengths on the GPU against the CPU: padded attention_extend, cache writes at device
// positions, the length ops, KVCache steps; the decode kernel and a whole model decode step
// captured once as a CUDA graph and replayed at growing lengths; and prompts of lengths 3, 12, 7
// as one batch giving each row its single run's logits (bf16, 2e-2) for every fixture.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "batched_rows_check.h"
#include "core/cuda_graph.h"
#include "cuda/cuda_test.h"
#include "kernels/cuda/attention_kernels_cuda.h"
#include "marlin/attention.h"
#include "marlin/kv_cache.h"
#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/stream.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

Tensor i32(const std::vector<int32_t>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::i32);
}

class BatchedLengthsCuda : public testing::CudaTest {
 protected:
  void TearDown() override { cuda::set_attention_decode_splits(0); }
};

const auto tolerance = testing::attention_tolerance;

TEST_F(BatchedLengthsCuda, PaddedExtendMatchesCpu) {
  testing::PoisonScope poison;
  // Full, continuing-padded, no-new-token, fresh-padded and empty rows.
  const std::vector<int32_t> lens{6, 290, 5, 3, 0}, fresh{6, 2, 0, 3, 0};
  const int64_t B = 5, T = 6, Hkv = 2, S = 300;
  int seed = 700;
  for (int64_t D : {64, 80, 128, 256})
    for (int64_t group : {1, 4})
      for (int splits : {0, 1, 3})
        for (DType dt : {DType::bf16, DType::f32}) {
          ++seed;
          const int64_t Hq = Hkv * group, window = seed % 2 ? 0 : 50;
          Tensor q = random_tensor({B, T, Hq, D}, dt, seed * 3);
          Tensor kc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 1);
          Tensor vc = random_tensor({B, Hkv, S, D}, dt, seed * 3 + 2);
          const auto want = to_double(ops::attention_extend(q, kc, vc, i32(lens), 0.1f, window, i32(fresh)));
          cuda::set_attention_decode_splits(splits);
          const auto got = to_double(ops::attention_extend(q.to(gpu), kc.to(gpu), vc.to(gpu),
                                                           i32(lens).to(gpu), 0.1f, window,
                                                           i32(fresh).to(gpu)));
          EXPECT_LT(relative_error(got, want), tolerance(dt))
              << "D=" << D << " group=" << group << " splits=" << splits << " " << dtype_name(dt);
        }
}

TEST_F(BatchedLengthsCuda, CacheWritesAndLengthOpsMatchCpu) {
  const int64_t B = 3, H = 4, T = 5, D = 80, S = 12;
  const std::vector<int32_t> starts{0, 7, 3}, counts{5, 2, 0};
  for (const bool with_counts : {true, false}) {
    Tensor host = random_tensor({B, H, S, D}, DType::bf16, 1);
    Tensor device = host.to(gpu);
    Tensor fresh = random_tensor({B, T, H, D}, DType::bf16, 2);
    ops::attention_cache_write(host, fresh.transpose(1, 2), i32(starts),
                               with_counts ? i32(counts) : Tensor());
    ops::attention_cache_write(device, fresh.to(gpu).transpose(1, 2), i32(starts).to(gpu),
                               with_counts ? i32(counts).to(gpu) : Tensor());
    EXPECT_EQ(device.to_float_vector(), host.to_float_vector()) << "counts=" << with_counts;
  }
  const Tensor lens = i32({0, 9, 4});
  Tensor out = Tensor::empty({3}, DType::i32, gpu);
  ops::add_lengths(lens.to(gpu), 3, {}, out);
  EXPECT_EQ(out.to_float_vector(), (std::vector<float>{3, 12, 7}));
  ops::add_lengths(out, 0, i32({1, 0, 2}).to(gpu), out);
  EXPECT_EQ(out.to_float_vector(), (std::vector<float>{4, 12, 9}));
  EXPECT_EQ(ops::sequence_positions(lens.to(gpu), 2).to_float_vector(),
            ops::sequence_positions(lens, 2).to_float_vector());
}

TEST_F(BatchedLengthsCuda, KVCacheStepsLikeTheCpu) {
  const KVCacheConfig config{.num_layers = 2, .num_kv_heads = 2, .head_dim = 64, .max_seq_len = 16, .dtype = DType::f16};
  KVCache host(config, 3), device(config, 3, gpu);
  for (KVCache* c : {&host, &device}) c->begin_step(5, {5, 1, 3});
  // Distinct keys and values: the one-launch write of both must not swap or mix them.
  Tensor k = random_tensor({3, 5, 2, 64}, DType::f16, 3), v = random_tensor({3, 5, 2, 64}, DType::f16, 4);
  for (int64_t layer = 0; layer < 2; ++layer) {
    host.update(layer, k.transpose(1, 2), v.transpose(1, 2));
    device.update(layer, k.to(gpu).transpose(1, 2), v.to(gpu).transpose(1, 2));
  }
  EXPECT_EQ(device.step_lengths().to_float_vector(), host.step_lengths().to_float_vector());
  host.end_step();
  device.end_step();
  for (int step = 0; step < 3; ++step) {
    Tensor one = random_tensor({3, 2, 1, 64}, DType::f16, 10 + step);
    Tensor other = random_tensor({3, 2, 1, 64}, DType::f16, 20 + step);
    host.update(1, one, other);
    device.update(1, one.to(gpu), other.to(gpu));
    host.advance();
    device.advance();
  }
  EXPECT_EQ(device.lengths().to_float_vector(), (std::vector<float>{8, 4, 6}));
  EXPECT_EQ(device.row_lengths(), host.row_lengths());
  // Only what was written is compared (the rest of the buffers is uninitialized memory).
  for (const bool keys : {true, false}) {
    const std::vector<float> h = (keys ? host.keys(1) : host.values(1)).to_float_vector();
    const std::vector<float> d = (keys ? device.keys(1) : device.values(1)).to_float_vector();
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t i = 0; i < 2 * 16 * 64; ++i) {
        const int64_t s = (i / 64) % 16;
        if (s >= host.seq_len(b)) continue;
        ASSERT_EQ(d[b * 2 * 16 * 64 + i], h[b * 2 * 16 * 64 + i]) << "keys=" << keys << " b=" << b << " s=" << s;
      }
  }
  ops::add_lengths(device.lengths(), 2, {}, device.lengths());  // as a replayed graph would
  device.refresh_host_lengths();
  EXPECT_EQ(device.row_lengths(), (std::vector<int64_t>{10, 6, 8}));
}

// The flash-decoding launch is captured once and replayed as the rows grow past several split
// boundaries: the same grid must give the CPU's result at every length.
TEST_F(BatchedLengthsCuda, DecodeGraphReplaysAtEveryLength) {
  const int64_t B = 3, Hq = 8, Hkv = 2, D = 128, S = 2048;
  Tensor q = random_tensor({B, Hq, D}, DType::bf16, 1).to(gpu);
  Tensor kc = random_tensor({B, Hkv, S, D}, DType::bf16, 2).to(gpu);
  Tensor vc = random_tensor({B, Hkv, S, D}, DType::bf16, 3).to(gpu);
  Tensor lens = i32({1, 300, 1000}).to(gpu);
  Stream stream = Stream::create(0);
  {
    StreamGuard guard(stream);
    ops::attention_decode(q, kc, vc, lens, 0.1f);  // warms the allocator for the capture
    stream.synchronize();
    auto s = static_cast<cudaStream_t>(stream.handle);
    Tensor out;
    // Ends the capture even when it throws, so the other tests can still use the GPU.
    const CapturedGraph graph = CapturedGraph::capture(
        s, 0, [&] { out = ops::attention_decode(q, kc, vc, lens, 0.1f); }, "test");
    std::vector<int32_t> now{1, 300, 1000};
    for (int replay = 0; replay < 6; ++replay) {
      graph.launch("test");
      stream.synchronize();
      const auto want = to_double(ops::attention_decode(q.to(Device::cpu()), kc.to(Device::cpu()),
                                                        vc.to(Device::cpu()), i32(now), 0.1f));
      EXPECT_LT(relative_error(to_double(out), want), tolerance(DType::bf16)) << "replay " << replay;
      ops::add_lengths(lens, 0, i32({1, 200, 173}).to(gpu), lens);
      for (int b = 0; b < 3; ++b) now[b] += std::vector<int32_t>{1, 200, 173}[b];
    }
  }
  stream.destroy();
}

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::vector<int32_t> prompt_of(const std::string& name) {
  const Tensor p = load_npy(fixture_dir(name) + "/prompt_ids.npy");
  return {p.data<int32_t>(), p.data<int32_t>() + p.numel()};
}

std::unique_ptr<CausalLM> load_bf16(const std::string& name) {
  ModelLoadOptions options;
  options.device = Device::cuda(0);
  options.dtype = DType::bf16;
  return load_model(fixture_dir(name), options);
}

TEST_F(BatchedLengthsCuda, EachRowMatchesItsSingleRunBf16) {
  for (const char* name : {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"}) {
    const auto model = load_bf16(name);
    testing::expect_batch_matches_single_runs(*model, prompt_of(name), {3, 12, 7}, 10, 2e-2, name);
  }
}

// A whole decode step of a batch of three rows of different lengths, captured once and replayed
// with new ids written into a persistent device buffer, gives the eager step's logits at every
// step: its positions, cache writes and attention lengths all come from the cache's buffers.
TEST_F(BatchedLengthsCuda, ModelDecodeStepReplaysAsAGraph) {
  const auto model = load_bf16("qwen3");
  const std::vector<int32_t> base = prompt_of("qwen3");
  const std::vector<int64_t> lengths{3, 12, 7};
  const int64_t B = 3, T = 12, V = model->config().vocab_size, steps = 6;
  std::vector<int32_t> flat;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) flat.push_back(base[static_cast<size_t>((t + b) % T)]);
  KVCache graphed = model->make_cache(T + steps + 2, B), eager = model->make_cache(T + steps + 2, B);
  Stream stream = Stream::create(0);
  {
    StreamGuard guard(stream);
    auto s = static_cast<cudaStream_t>(stream.handle);
    for (KVCache* c : {&graphed, &eager}) {
      c->begin_step(T, lengths);
      model->forward(Tensor::from_vector(flat, {B, T}, DType::i32), c);
    }
    Tensor ids = Tensor::from_vector(std::vector<int32_t>{5, 6, 7}, {B, 1}, DType::i32).to(gpu);
    model->forward(ids, &graphed);  // one eager decode step warms the allocator
    model->forward(ids, &eager);
    stream.synchronize();
    // Captured into a private allocator pool: the eager steps between replays never get the
    // graph's buffers. The capture is ended even when the step throws.
    Tensor logits;
    const CapturedGraph graph =
        CapturedGraph::capture(s, 0, [&] { logits = model->forward(ids, &graphed); }, "test");
    graphed.refresh_host_lengths();  // the capture ran the host code only
    for (int64_t step = 0; step < steps; ++step) {
      const std::vector<int32_t> next{static_cast<int32_t>((11 * step + 1) % V),
                                      static_cast<int32_t>((13 * step + 2) % V),
                                      static_cast<int32_t>((17 * step + 3) % V)};
      ids.copy_from(Tensor::from_vector(next, {B, 1}, DType::i32));
      graph.launch("test");
      stream.synchronize();
      graphed.refresh_host_lengths();
      const Tensor want = model->forward(Tensor::from_vector(next, {B, 1}, DType::i32), &eager);
      EXPECT_LT(relative_error(to_double(logits), to_double(want)), 1e-5) << "step " << step;
      EXPECT_EQ(graphed.row_lengths(), eager.row_lengths()) << "step " << step;
    }
  }
  stream.destroy();
}

}  // namespace
}  // namespace marlin
