// GPU-only: fused projections and fused norm epilogues on CUDA against the CPU and the unfused
// composition. Strided copies on the device (2-D copies), QuantizedLinear::concat / columns on
// the device bit for bit as on the host, FusedLinear against each part's own GEMM, the down
// projection's SwiGLU inside its GEMM against silu_mul then the GEMM, whole models
// fused vs unfused, forward_fused vs forward + norm, quantize_linear_layers on the device
// against load_model at the same bits, and the kernel launches of a decode step's layers
// counted in its CUDA graph.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_graph.h"
#include "cuda/cuda_test.h"
#include "kernels/cuda/cuda_kernels.h"
#include "marlin/allocator.h"
#include "marlin/model.h"
#include "marlin/npy.h"
#include "marlin/ops_nn.h"
#include "marlin/safetensors.h"
#include "marlin/stream.h"
#include "models/llama.h"
#include "test_util.h"

namespace marlin {
namespace {

namespace fs = std::filesystem;
using testing::random_tensor;
using testing::relative_error;
using testing::to_double;

class FusedCuda : public testing::CudaTest {};

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu()).contiguous(), y = b.to(Device::cpu()).contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

bool same_weights(const QuantizedLinear& a, const QuantizedLinear& b) {
  const bool w = a.bits() == 16 ? same_bytes(a.weight(), b.weight())
                                : same_bytes(a.qweight().packed, b.qweight().packed) &&
                                      same_bytes(a.qweight().scales, b.qweight().scales);
  return w && a.bias().defined() == b.bias().defined() && (!a.bias().defined() || same_bytes(a.bias(), b.bias()));
}

TEST_F(FusedCuda, StridedCopiesStayOnTheDeviceAndMatchTheHost) {
  testing::PoisonScope poison;
  const Tensor qkv = random_tensor({9, 3, 96}, DType::bf16, 1);
  const Tensor g = qkv.to(gpu);
  // Head views of a column block, made contiguous by one 2-D copy.
  const Tensor k_host = qkv.narrow(2, 40, 32).view({27, 2, 16});
  const Tensor k_dev = g.narrow(2, 40, 32).view({27, 2, 16});
  EXPECT_EQ(k_dev.strides(), k_host.strides());
  EXPECT_EQ(k_dev.contiguous().to_float_vector(), k_host.contiguous().to_float_vector());
  // Layouts that are not runs (a transpose) still copy correctly, through the host.
  EXPECT_EQ(g.transpose(0, 2).contiguous().to_float_vector(), qkv.transpose(0, 2).contiguous().to_float_vector());
  // Copies into a column block of a device matrix, from the host and from the device.
  Tensor dst = random_tensor({33, 70}, DType::f32, 2);
  Tensor dst_dev = dst.to(gpu);
  const Tensor src = random_tensor({33, 13}, DType::f32, 3);
  dst.narrow(1, 50, 13).copy_from(src);
  dst_dev.narrow(1, 50, 13).copy_from(src);
  dst_dev.narrow(1, 5, 13).copy_from(src.to(gpu));
  dst.narrow(1, 5, 13).copy_from(src);
  EXPECT_EQ(dst_dev.to_float_vector(), dst.to_float_vector());
}

TEST_F(FusedCuda, ConcatAndColumnsOnTheDeviceEqualTheHost) {
  for (const int bits : {16, 8, 4, 2}) {
    std::vector<QuantizedLinear> host, dev;
    uint64_t seed = 10 * static_cast<uint64_t>(bits);
    for (const int64_t n : {96, 40, 40}) {
      const Tensor w = random_tensor({n, 256}, DType::f32, ++seed, 0.05f);
      const Tensor b = random_tensor({n}, DType::f32, ++seed);
      host.emplace_back(w, b, bits, 64, LayerPlacement{Device::cpu(), DType::bf16});
      dev.emplace_back(w, b, bits, 64, LayerPlacement{gpu, DType::bf16});
    }
    const QuantizedLinear whole_host = QuantizedLinear::concat(host), whole_dev = QuantizedLinear::concat(dev);
    EXPECT_TRUE(same_weights(whole_dev, whole_host)) << bits;
    EXPECT_TRUE(same_weights(whole_dev.columns(96, 40), dev[1])) << bits;
    EXPECT_TRUE(same_weights(whole_dev.columns(136, 40), host[2])) << bits;
  }
}

TEST_F(FusedCuda, FusedLinearMatchesEachPartsGemm) {
  testing::PoisonScope poison;
  for (const DType dt : {DType::bf16, DType::f16})
    for (const int bits : {16, 8, 4, 2}) {
      std::vector<QuantizedLinear> parts;
      uint64_t seed = 100 * static_cast<uint64_t>(bits);
      for (const int64_t n : {512, 128, 128}) {  // q, k, v of 4 + 1 + 1 heads of 128
        const Tensor w = random_tensor({n, 512}, DType::f32, ++seed, 0.05f);
        const Tensor b = bits == 8 ? random_tensor({n}, DType::f32, ++seed) : Tensor();
        parts.emplace_back(w, b, bits, 128, LayerPlacement{gpu, dt});
      }
      const FusedLinear fused(parts);
      ASSERT_TRUE(fused.fused());
      for (const int64_t M : {1, 3, 8, 33, 300}) {
        const Tensor x = random_tensor({M, 512}, dt, static_cast<uint64_t>(M));
        const std::vector<Tensor> outs = fused.forward(x.to(gpu));
        for (size_t i = 0; i < parts.size(); ++i) {
          const QuantizedLinear& p = parts[i];
          // Another split of K may reorder the f32 sums: a rounding of the dtype at most.
          EXPECT_LT(relative_error(to_double(outs[i]), to_double(p.forward(x.to(gpu)))), 4e-3)
              << dtype_name(dt) << " bits " << bits << " part " << i << " M " << M;
          const Tensor w = p.bits() == 16 ? p.weight() : dequantize_cpu(p.qweight().to(Device::cpu()), DType::f32);
          const std::vector<double> ref = testing::reference_gemm(x, to_double(w), 512, p.out_features(),
                                                                  p.bias().defined() ? p.bias().to(Device::cpu()) : Tensor());
          EXPECT_LT(relative_error(to_double(outs[i]), ref), 1e-2) << dtype_name(dt) << " bits " << bits << " M " << M;
        }
      }
    }
}

// QuantizedLinear::forward_rms_normed: at decode sizes on the split-K kernel (small weights
// with MARLIN_SMALL_DECODE_TILED=0) the norm runs inside the GEMM's launch, its sums in
// rms_norm's order, so the result is forward(norm.forward(x)) bit for bit; also for strided rows
// (a narrow of a wider output, as MLA's q_a part is), and where the fused kernel does not apply
// (M > 1, K / 8 past a block's threads, small weights on the stream kernel: the default)
// through the fallback.
TEST_F(FusedCuda, NormInsideGemmIsNormThenGemmBitForBit) {
  testing::PoisonScope poison;
  uint64_t seed = 900;
  for (const bool small_tiled : {false, true})
    for (const DType dt : {DType::bf16, DType::f16})
      for (const int bits : {8, 4, 2})
        for (const auto& [K, N] : std::vector<std::pair<int64_t, int64_t>>{{768, 1024}, {2048, 264}, {96, 40}, {2112, 64}}) {
          const QuantizedLinear linear(random_tensor({N, K}, DType::f32, ++seed, 0.05f), {}, bits, 32,
                                       LayerPlacement{gpu, dt});
          const RMSNorm norm(random_tensor({K}, DType::f32, ++seed), 1e-5, LayerPlacement{gpu, dt});
          for (const int64_t M : {1, 2, 5, 8, 9}) {
            cuda::set_small_decode_tiled(small_tiled);
            const Tensor wide = random_tensor({M, K + 24}, dt, ++seed, 3.0f).to(gpu);
            const Tensor x = wide.narrow(1, 8, K);
            const Tensor fused = linear.forward_rms_normed(x, norm);
            const Tensor apart = linear.forward(norm.forward(x));
            cuda::set_small_decode_tiled(true);
            EXPECT_TRUE(same_bytes(fused, apart)) << dtype_name(dt) << " bits " << bits << " K " << K << " N " << N
                                                  << " M " << M << (small_tiled ? " (stream kernel)" : "");
          }
        }
}

// The down projection's SwiGLU inside its stream GEMM (one row of FP8): the same bytes as
// silu_mul's launch then the GEMM, for gate and up as the halves of one gate+up row (the fused
// projection's views), over group sizes 32-256, tile-padded K, bias or none. Where it does not
// apply (FP4, INT2, more rows, the small weights' split-K kernel) forward_silu_mul runs the two
// apart.
TEST_F(FusedCuda, SiluMulInsideGemmIsSiluMulThenGemmBitForBit) {
  testing::PoisonScope poison;
  struct Case {
    int64_t K, N;
    int group;
  };
  const Case cases[] = {{768, 1024, 128}, {2112, 64, 64}, {96, 40, 32}, {3328, 264, 256}, {4160, 200, 32}};
  uint64_t seed = 2400;
  int fused_runs = 0;
  for (const bool small_tiled : {true, false})
    for (const DType dt : {DType::bf16, DType::f16})
      for (const int bits : {4, 8, 2})
        for (const Case& c : cases) {
          const Tensor bias = seed % 3 == 0 ? random_tensor({c.N}, DType::f32, seed + 7) : Tensor();
          const QuantizedLinear linear(random_tensor({c.N, c.K}, DType::f32, ++seed, 0.05f), bias, bits, c.group,
                                       LayerPlacement{gpu, dt});
          for (const int64_t M : {1, 3}) {
            cuda::set_small_decode_tiled(small_tiled);
            const Tensor gate_up = random_tensor({M, 2 * c.K}, dt, ++seed, 3.0f).to(gpu);
            const Tensor gate = gate_up.narrow(1, 0, c.K), up = gate_up.narrow(1, c.K, c.K);
            const Tensor fused = linear.forward_silu_mul(gate, up);
            const Tensor apart = linear.forward(ops::silu_mul(gate, up));
            const std::string what = std::string(dtype_name(dt)) + " bits " + std::to_string(bits) + " K " +
                                     std::to_string(c.K) + " N " + std::to_string(c.N) + " M " + std::to_string(M);
            EXPECT_TRUE(same_bytes(fused, apart)) << what;
            // The fused launch itself where it applies (so the comparison above is not two
            // runs of the same path).
            const bool applies = M == 1 && bits == 8 && (small_tiled || linear.qweight().nbytes() > (size_t{4} << 20));
            Tensor direct = Tensor::empty({M, c.N}, dt, gpu);
            EXPECT_EQ(cuda::gemm_q_silu_mul(gate.contiguous(), up.contiguous(), linear.qweight(), linear.bias(), direct) &&
                          M == 1,
                      applies)
                << what;
            if (applies) {
              EXPECT_TRUE(same_bytes(direct, apart)) << what;
              ++fused_runs;
            }
            cuda::set_small_decode_tiled(true);
          }
        }
  EXPECT_EQ(fused_runs, 2 * 5);
}

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::unique_ptr<CausalLM> load_on(Device device, const std::string& dir, int bits, bool fuse) {
  ModelLoadOptions options;
  options.device = device;
  options.dtype = DType::bf16;
  options.bits = bits;
  options.group_size = 32;
  options.fuse_projections = fuse;
  return load_model(dir, options);
}

// Prefill plus 8 teacher-forced decode steps (the same tokens for both models), all logits.
std::vector<float> run(const CausalLM& model, const Tensor& prompt) {
  KVCache cache = model.make_cache(prompt.numel() + 9);
  std::vector<float> all = model.forward(prompt, &cache).to_float_vector();
  for (int32_t step = 0; step < 8; ++step) {
    const std::vector<float> v =
        model.forward(Tensor::from_vector(std::vector<int32_t>{3 + 5 * step}, {1}, DType::i32), &cache)
            .to_float_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

double rel(const std::vector<float>& a, const std::vector<float>& b) {
  return relative_error(std::vector<double>(a.begin(), a.end()), std::vector<double>(b.begin(), b.end()));
}

TEST_F(FusedCuda, FusedModelsMatchUnfusedAndTheCpu) {
  for (const char* name : {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"})
    for (const int bits : {16, 8, 4, 2}) {
      const std::string dir = fixture_dir(name);
      const Tensor prompt = load_npy(dir + "/prompt_ids.npy");
      const std::vector<float> fused = run(*load_on(gpu, dir, bits, true), prompt);
      const std::vector<float> unfused = run(*load_on(gpu, dir, bits, false), prompt);
      const std::vector<float> cpu = run(*load_on(Device::cpu(), dir, bits, true), prompt);
      EXPECT_LT(rel(fused, unfused), 1e-2) << name << " bits " << bits;
      EXPECT_LT(rel(fused, cpu), 2e-2) << name << " bits " << bits;
    }
}

TEST_F(FusedCuda, ForwardFusedIsForwardThenNormBitForBit) {
  testing::PoisonScope poison;
  const auto model = load_on(gpu, fixture_dir("qwen3"), 4, true);
  const LlamaModel& m = dynamic_cast<const LlamaModel&>(*model);
  const TransformerBlock& block = m.layers()[1];
  const Tensor positions =
      Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6}, {14}, DType::i32).to(gpu);
  const Tensor h = random_tensor({2, 7, 64}, DType::bf16, 5).to(gpu);
  Tensor h_ref = h.clone(), h_fused = h.clone();
  const Tensor ref = m.norm().forward(block.forward(h_ref, positions));
  const Tensor out =
      block.forward_fused(h_fused, block.input_layernorm().forward(h_fused), positions, nullptr, m.norm());
  EXPECT_EQ(h_fused.to_float_vector(), h_ref.to_float_vector());
  EXPECT_EQ(out.to_float_vector(), ref.to_float_vector());
}

TEST_F(FusedCuda, QuantizeLinearLayersOnTheDeviceEqualsLoadModel) {
  // A bf16 checkpoint: the device's 16-bit weights are the checkpoint's values, so quantizing
  // them on the GPU must give the host quantizer's codes.
  const std::string dir = fixture_dir("qwen2_bf16");
  for (const int bits : {8, 4, 2}) {
    QuantizedModel q = load_and_quantize(dir, bits, 32, gpu);
    ModelLoadOptions options;
    options.device = gpu;
    options.bits = bits;
    options.group_size = 32;
    const auto reference = load_model(dir, options);
    const fs::path a = fs::temp_directory_path() / "marlin_fused_cuda_a", b = fs::temp_directory_path() / "marlin_fused_cuda_b";
    fs::remove_all(a);
    fs::remove_all(b);
    save_quantized(*q.model, a.string());
    save_quantized(*reference, b.string());
    const SafetensorsCheckpoint x = SafetensorsCheckpoint::open(a.string()), y = SafetensorsCheckpoint::open(b.string());
    for (const std::string& n : y.names()) EXPECT_TRUE(same_bytes(x.tensor(n), y.tensor(n))) << bits << " " << n;
    fs::remove_all(a);
    fs::remove_all(b);
    const Tensor prompt = load_npy(dir + "/prompt_ids.npy");
    EXPECT_EQ(q.model->forward(prompt).to_float_vector(), reference->forward(prompt).to_float_vector()) << bits;
  }
}

struct GraphCounts {
  int64_t kernels = 0, copies = 0, others = 0;
};

// The decoder layers of one T = 1 decode step (embedding, lm_head and the logits excluded)
// captured as a CUDA graph, its nodes counted by type: the step's launches per layer.
GraphCounts decode_layers_graph(const LlamaModel& m, KVCache& cache, const Device& gpu) {
  GraphCounts counts;
  Stream stream = Stream::create(0);
  {
    StreamGuard guard(stream);
    auto s = static_cast<cudaStream_t>(stream.handle);
    const Tensor h = random_tensor({1, 1, m.config().hidden_size}, m.dtype(), 9).to(gpu);
    cache.begin_step(1);
    const Tensor& positions = cache.lengths();
    auto layers = [&] {
      const auto& blocks = m.layers();
      Tensor normed = blocks.front().input_layernorm().forward(h);
      for (size_t i = 0; i < blocks.size(); ++i)
        normed = blocks[i].forward_fused(h, normed, positions, &cache,
                                         i + 1 < blocks.size() ? blocks[i + 1].input_layernorm() : m.norm());
    };
    layers();  // eager once: the allocator holds every buffer the capture asks for
    stream.synchronize();
    cudaGraph_t graph = nullptr;
    uint64_t pool = 0;
    {
      // The capture is ended even when layers() throws, so the other tests can still use the
      // GPU; its allocator pool is released once the graph is destroyed.
      ScopedCapture capture(s, 0);
      layers();  // the same step again: the cache writes land where they did
      graph = capture.end("decode_layers_graph");
      pool = capture.pool();
    }
    size_t n = 0;
    EXPECT_EQ(cudaGraphGetNodes(graph, nullptr, &n), cudaSuccess);
    std::vector<cudaGraphNode_t> nodes(n);
    EXPECT_EQ(cudaGraphGetNodes(graph, nodes.data(), &n), cudaSuccess);
    for (cudaGraphNode_t node : nodes) {
      cudaGraphNodeType type;
      EXPECT_EQ(cudaGraphNodeGetType(node, &type), cudaSuccess);
      if (type == cudaGraphNodeTypeKernel) {
        ++counts.kernels;
      } else if (type == cudaGraphNodeTypeMemcpy) {
        ++counts.copies;
      } else {
        ++counts.others;
      }
    }
    cudaGraphDestroy(graph);
    CudaCachingAllocator::instance().release_capture_pool(0, pool);
    cache.end_step();
  }
  stream.destroy();
  return counts;
}

// Fusing q/k/v and gate/up saves three launches per layer at any bit width (each quantized GEMM
// is one kernel; a 16-bit GEMM with bias is cuBLAS plus a bias kernel, so qwen2 saves more),
// and a batch-1 decode step copies nothing (q is contiguous already). The counts are printed
// for docs (launches per layer, fused and not).
TEST_F(FusedCuda, DecodeStepLaunchesPerLayer) {
  for (const char* name : {"llama_gqa", "qwen2", "qwen3"})
    for (const int bits : {16, 4}) {
      const std::string dir = fixture_dir(name);
      GraphCounts counts[2];
      int64_t layers = 0;
      for (const bool fuse : {false, true}) {
        const auto model = load_on(gpu, dir, bits, fuse);
        const LlamaModel& m = dynamic_cast<const LlamaModel&>(*model);
        layers = static_cast<int64_t>(m.layers().size());
        KVCache cache = model->make_cache(32);
        model->forward(load_npy(dir + "/prompt_ids.npy"), &cache);  // a prompt in the cache
        counts[fuse] = decode_layers_graph(m, cache, gpu);
      }
      std::printf("[ %s bits %d ] decode-step launches per layer: unfused %.1f, fused %.1f (%lld layers; "
                  "copies %lld -> %lld, other nodes %lld)\n",
                  name, bits, double(counts[0].kernels) / double(layers), double(counts[1].kernels) / double(layers),
                  static_cast<long long>(layers), static_cast<long long>(counts[0].copies),
                  static_cast<long long>(counts[1].copies), static_cast<long long>(counts[1].others));
      EXPECT_GE(counts[0].kernels - counts[1].kernels, 3 * layers) << name << " bits " << bits;
      if (bits == 4) {
        EXPECT_EQ(counts[0].kernels - counts[1].kernels, 3 * layers) << name;
      }
      EXPECT_EQ(counts[1].copies, 0) << name << " bits " << bits;
    }
}

}  // namespace
}  // namespace marlin
