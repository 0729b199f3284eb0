// marlin bench generate: prefill and greedy decode through the public generate path, with the
// roofline measured in the same run: the bytes a decode step must read (from the model's own
// layers) over the device's measured read bandwidth, and the prefill's model FLOPs over the
// measured fp16 GEMM rate (cuBLAS on CUDA).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "bench_common.h"
#include "marlin/allocator.h"
#include "marlin/generate.h"
#include "marlin/kv_cache.h"
#include "marlin/model.h"
#include "marlin/ops.h"
#include "marlin/stream.h"
#include "marlin/thread_pool.h"
#include "marlin/timing.h"
#include "models/step_cost.h"
#ifdef MARLIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

#ifdef MARLIN_KERNEL_TRACE
namespace marlin::cuda {
void dump_kernel_trace();  // src/kernels/cuda/kernel_trace.cu: the diagnostic build's block stamps
}
#endif
namespace marlin::cli {
namespace {

using json = nlohmann::json;
constexpr const char* kOp = "bench generate";

struct Options {
  std::string config;     // config.json (with --synthetic)
  std::string model_dir;  // -m: a checkpoint directory
  bool synthetic = false;
  int bits = 4;
  int group_size = 128;
  int64_t prompt_len = 512;
  int64_t gen_len = 128;
  int64_t batch = 1;
  std::string device;
  // Default: the config's 16-bit type (bf16 if it names none) on every device, so the CPU reads
  // 16-bit lm_head and activations as a GPU does; f32 is the CPU model's exact-reference mode.
  std::string dtype;
  int warmup = 1;
  int runs = 1;
  uint64_t seed = 0;
  double bandwidth_mib = 0;  // 0: 1 GiB on CUDA, max(1 GiB, 4 x the last-level cache) on the CPU
  bool json_output = false;
  bool no_graph = false;  // eager decode steps (the reference) instead of the CUDA graph
  // KV cache positions per row; 0: exactly prompt_len + gen_len (what generate makes). A long
  // cache with a short prompt measures the memory of, say, a 32k-token cache without a 32k
  // prefill.
  int64_t cache_len = 0;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
    std::string s;
    if (!(f >> s) || s.empty()) continue;
    int64_t v = std::stoll(s);
    if (s.back() == 'K') v <<= 10;
    if (s.back() == 'M') v <<= 20;
    best = std::max(best, v);
  }
  return best;
}

// Read bandwidth in GB/s. CUDA: a device-to-device copy (bytes read + written over time, the
// usual figure). CPU: every pool thread sums its share of a buffer far larger than the
// last-level cache, as the GEMV kernels read their weights.
double measure_read_bandwidth(Device device, int64_t bytes) {
  if (device.is_cuda()) return measure_copy_bandwidth(device, bytes);
  const int64_t words = bytes / 8;
  std::vector<uint64_t> buffer(static_cast<size_t>(words));
  parallel_for(0, words, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buffer[static_cast<size_t>(i)] = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
  });
  volatile uint64_t sink = 0;
  const double ms = median(time_runs(device, 1, 5, [&] {
    const int64_t chunk = (words + num_threads() - 1) / num_threads();
    std::vector<uint64_t> sums(static_cast<size_t>(num_threads()), 0);
    parallel_for(0, num_threads(), 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) {
        const uint64_t* p = buffer.data() + t * chunk;
        const int64_t n = std::min(chunk, words - t * chunk);
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
        for (; i < n; ++i) s0 += p[i];
        sums[static_cast<size_t>(t)] = s0 + s1 + s2 + s3;
      }
    });
    for (uint64_t s : sums) sink = sink + s;
  }));
  return static_cast<double>(words * 8) / (ms * 1e-3) / 1e9;
}

// Dense fp16 GEMM rate in TFLOP/s at the prefill's largest linear shape (cuBLAS on CUDA).
double measure_gemm_tflops(Device device, int64_t M, int64_t K, int64_t N) {
  const Tensor A = ops::random_normal({M, K}, DType::f16, device, 11, 1.0f);
  const Tensor B = ops::random_normal({K, N}, DType::f16, device, 12, 0.02f);
  const int iters = device.is_cpu() ? 3 : 20;
  const double ms = median(time_runs(device, 1, iters, [&] { ops::gemm(A, B); }));
  return 2.0 * static_cast<double>(M * K) * static_cast<double>(N) / (ms * 1e-3) / 1e12;
}

std::optional<DType> parse_dtype(const std::string& s) {
  if (s.empty()) return std::nullopt;
  if (s == "f32") return DType::f32;
  if (s == "f16") return DType::f16;
  if (s == "bf16") return DType::bf16;
  fail(kOp, "--dtype must be f32, f16 or bf16, got '", s, "'");
}

json run_benchmark(const Options& o) {
  MARLIN_CHECK(o.synthetic == o.model_dir.empty(), kOp,
               "give either --config CONFIG.json --synthetic or -m DIR");
  MARLIN_CHECK(!o.synthetic || !o.config.empty(), kOp, "--synthetic needs --config CONFIG.json");
  MARLIN_CHECK(o.prompt_len >= 1 && o.gen_len >= 2 && o.batch >= 1 && o.runs >= 1 && o.warmup >= 0,
               kOp, "need --prompt-len >= 1, --gen-len >= 2, --batch >= 1, --runs >= 1, --warmup >= 0");
  MARLIN_CHECK(o.bits == 16 || o.bits == 8 || o.bits == 4 || o.bits == 2, kOp,
               "--bits must be 16, 8, 4 or 2, got ", o.bits);
  MARLIN_CHECK(o.cache_len == 0 || o.cache_len >= o.prompt_len + o.gen_len, kOp, "--cache-len ",
               o.cache_len, " is shorter than --prompt-len + --gen-len (", o.prompt_len + o.gen_len, ")");
  const Device device = o.device.empty() ? (cuda_available() ? Device::cuda(0) : Device::cpu())
                                         : Device::parse(o.device);
  ModelLoadOptions lo;
  lo.device = device;
  lo.bits = o.bits;
  lo.group_size = o.group_size;
  lo.dtype = parse_dtype(o.dtype);
  const auto default_dtype = [&](const ModelConfig& config) {
    if (!lo.dtype) lo.dtype = default_model_dtype(config, Device::cuda());
  };

  // The bandwidth buffers come and go before the model, so the peaks below are the model's.
  const int64_t bw_bytes = o.bandwidth_mib > 0 ? static_cast<int64_t>(o.bandwidth_mib * 1048576.0)
                           : device.is_cuda() ? (int64_t{1} << 30)
                                              : std::max(int64_t{1} << 30, 4 * last_level_cache_bytes());
  const double read_gbps = measure_read_bandwidth(device, bw_bytes);
  if (device.is_cuda()) {
    CudaCachingAllocator::instance().empty_cache();
    CudaCachingAllocator::instance().reset_peak(device.index);
  }

  const auto load_start = std::chrono::steady_clock::now();
  std::unique_ptr<CausalLM> model;
  std::string source;
  if (o.synthetic) {
    const ModelConfig config = load_model_config(o.config);
    default_dtype(config);
    model = load_synthetic_model(config, lo, o.seed);
    source = o.config;
  } else {
    default_dtype(load_model_config(o.model_dir));
    model = load_model(o.model_dir, lo);
    source = o.model_dir;
  }
  if (device.is_cuda()) device_synchronize(device.index);
  const double load_s = seconds_since(load_start);
  const ModelConfig& c = model->config();
  size_t load_peak = 0;
  if (device.is_cuda()) {
    load_peak = CudaCachingAllocator::instance().stats(device.index).peak_allocated_bytes;
    CudaCachingAllocator::instance().reset_peak(device.index);
  }

  std::mt19937_64 rng(o.seed + 1);
  std::uniform_int_distribution<int64_t> token(0, c.vocab_size - 1);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(o.batch));
  for (auto& p : prompts)
    for (int64_t t = 0; t < o.prompt_len; ++t) p.push_back(token(rng));
  GenerationConfig gc;
  gc.max_new_tokens = o.gen_len;
  gc.do_sample = false;
  gc.repetition_penalty = 1.0f;
  gc.eos_token_id = {};  // never stop early: every run decodes gen_len tokens
  gc.cuda_graph = !o.no_graph;
  // The run's cache: one of --cache-len positions made here and reused by every run, or the one
  // generate makes of exactly the positions needed.
  const int64_t cache_positions = o.cache_len > 0 ? o.cache_len : o.prompt_len + o.gen_len;
  std::optional<KVCache> cache;
  if (o.cache_len > 0) cache.emplace(model->make_cache(o.cache_len, o.batch));
  std::vector<int32_t> flat;
  for (const auto& p : prompts)
    for (const int64_t t : p) flat.push_back(static_cast<int32_t>(t));
  const Tensor ids = Tensor::from_vector(flat, {o.batch, o.prompt_len}, DType::i32);
  const auto run = [&](GenerationStats* stats) {
    if (cache) {
      generate(*model, ids, gc, &*cache, nullptr, stats);
    } else {
      generate(*model, prompts, gc, nullptr, stats);
    }
  };
  for (int i = 0; i < o.warmup; ++i) run(nullptr);
  std::vector<double> prefill_ms, decode_ms, capture_ms;
  bool graph_used = false;
  for (int i = 0; i < o.runs; ++i) {
    GenerationStats stats;
    run(&stats);
    MARLIN_CHECK(stats.generated_tokens == o.batch * o.gen_len, kOp, "generated ", stats.generated_tokens,
                 " tokens, expected ", o.batch * o.gen_len);
    prefill_ms.push_back(stats.prefill_ms);
    decode_ms.push_back(stats.decode_ms);
    capture_ms.push_back(stats.capture_ms);
    graph_used = stats.cuda_graph;
  }
  const double prefill = median(prefill_ms), decode = median(decode_ms);
  const int64_t steps = o.gen_len - 1;  // decode steps after the prefill's first token

  // A step feeding the token at position p reads p + 1 cached positions; p runs over
  // prompt_len .. prompt_len + steps - 1.
  const double kv_positions = static_cast<double>(o.prompt_len) + static_cast<double>(steps + 1) / 2.0;
  const auto bytes = decode_step_bytes(*model, o.batch, kv_positions);
  const auto flops = prefill_flops(*model, o.batch, o.prompt_len);
  const auto resident = resident_weight_bytes(*model);
  const int64_t cache_bytes = kv_cache_bytes(*model, cache_positions, o.batch);
  const int64_t gemm_k = c.hidden_size, gemm_n = std::max(c.intermediate_size, c.hidden_size);
  const double gemm_tflops = measure_gemm_tflops(device, o.batch * o.prompt_len, gemm_k, gemm_n);

  json r;
  r["command"] = "bench generate";
  r["model"] = source;
  r["model_type"] = std::string(model_type_name(c.model_type));
  r["device"] = device.str();
  r["device_name"] = device_name(device);
  r["threads"] = device.is_cpu() ? num_threads() : 0;
  r["bits"] = o.bits;
  r["group_size"] = o.group_size;
  r["dtype"] = std::string(dtype_name(model->dtype()));
  r["batch"] = o.batch;
  r["prompt_len"] = o.prompt_len;
  r["gen_len"] = o.gen_len;
  r["runs"] = o.runs;
  r["load_s"] = load_s;
  r["prefill_ms"] = prefill;
  r["prefill_tokens_per_s"] = static_cast<double>(o.batch * o.prompt_len) / (prefill * 1e-3);
  r["decode_ms"] = decode;
  r["cuda_graph"] = graph_used;  // decode steps replayed a captured graph
  r["graph_capture_ms"] = median(capture_ms);  // once per generate call, not in decode_ms
  r["decode_tokens_per_s"] = static_cast<double>(o.batch * steps) / (decode * 1e-3);
  r["time_per_output_token_ms"] = decode / static_cast<double>(steps);
  r["device_read_gbps"] = read_gbps;
  r["bandwidth_buffer_bytes"] = bw_bytes;
  r["gemm_fp16_tflops"] = gemm_tflops;
  r["gemm_fp16_shape"] = {o.batch * o.prompt_len, gemm_k, gemm_n};
  if (bytes) {
    const double step_s = decode * 1e-3 / static_cast<double>(steps);
    const double achieved = static_cast<double>(bytes->total()) / step_s / 1e9;
    r["bytes_per_step"] = {{"quantized_weights", bytes->quantized_weights},
                           {"dense_weights", bytes->dense_weights},
                           {"norm_weights", bytes->norm_weights},
                           {"embedding_rows", bytes->embedding_rows},
                           {"kv_cache", bytes->kv_cache},
                           {"routed_experts", bytes->routed_experts},
                           {"weights", bytes->weights()},
                           {"total", bytes->total()}};
    r["kv_positions_mean"] = kv_positions;
    r["achieved_gbps"] = achieved;
    r["roofline_fraction"] = achieved / read_gbps;
    r["roofline_tokens_per_s"] = static_cast<double>(o.batch) * read_gbps * 1e9 / static_cast<double>(bytes->total());
  }
  if (flops) {
    const double achieved = *flops / (prefill * 1e-3) / 1e12;
    r["prefill_flops"] = *flops;
    r["prefill_tflops"] = achieved;
    r["prefill_flop_fraction"] = achieved / gemm_tflops;
    r["prefill_limit_ms"] = *flops / (gemm_tflops * 1e12) * 1e3;
  }
  // What the model and its cache hold: the floor under the peak (every expert resident).
  r["kv_cache_positions"] = cache_positions;
  r["kv_cache_bytes"] = cache_bytes;
  if (resident) r["weight_bytes"] = *resident;
  if (device.is_cuda()) {
    r["peak_allocated_bytes_load"] = load_peak;
    const size_t peak = CudaCachingAllocator::instance().stats(device.index).peak_allocated_bytes;
    r["peak_allocated_bytes"] = peak;
    if (resident)
      r["peak_over_weights_plus_cache"] =
          static_cast<double>(peak) / static_cast<double>(*resident + cache_bytes);
#ifdef MARLIN_WITH_CUDA
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(device.index) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      r["device_memory_used_bytes"] = total_b - free_b;
#endif
  }
  return r;
}

void print_text(const json& r) {
  auto num = [&](const char* key) { return r.contains(key) ? r[key].get<double>() : 0.0; };
  std::printf("marlin bench generate: %s (%s) on %s (%s)\n", r["model"].get<std::string>().c_str(),
              r["model_type"].get<std::string>().c_str(), r["device"].get<std::string>().c_str(),
              r["device_name"].get<std::string>().c_str());
  std::printf("  bits %d, group %d, %s activations, batch %lld, prompt %lld, %lld new tokens, load %.1f s\n",
              r["bits"].get<int>(), r["group_size"].get<int>(), r["dtype"].get<std::string>().c_str(),
              static_cast<long long>(r["batch"].get<int64_t>()), static_cast<long long>(r["prompt_len"].get<int64_t>()),
              static_cast<long long>(r["gen_len"].get<int64_t>()), num("load_s"));
  std::printf("  prefill  %10.1f tokens/s  (%.1f ms)\n", num("prefill_tokens_per_s"), num("prefill_ms"));
  std::printf("  decode   %10.2f tokens/s  (%.3f ms per output token; %s)\n", num("decode_tokens_per_s"),
              num("time_per_output_token_ms"),
              r.value("cuda_graph", false)
                  ? ("CUDA graph, captured in " + std::to_string(num("graph_capture_ms")) + " ms").c_str()
                  : "eager steps");
  std::printf("  read bandwidth measured: %.1f GB/s (%s)\n", num("device_read_gbps"),
              r["device"].get<std::string>() == "cpu" ? "threaded read" : "device-to-device copy");
  if (r.contains("bytes_per_step")) {
    const json& b = r["bytes_per_step"];
    std::printf("  bytes per decode step: %.1f MB (weights %.1f MB: quantized %.1f, 16-bit %.1f",
                b["total"].get<double>() / 1e6, b["weights"].get<double>() / 1e6,
                b["quantized_weights"].get<double>() / 1e6, b["dense_weights"].get<double>() / 1e6);
    if (b.value("routed_experts", int64_t{0}) > 0)
      std::printf(", of which the chosen routed experts %.1f", b["routed_experts"].get<double>() / 1e6);
    std::printf("; KV cache %.1f MB at %.1f positions)\n", b["kv_cache"].get<double>() / 1e6,
                num("kv_positions_mean"));
    std::printf("  achieved %.1f GB/s = %.1f%% of the roofline (roofline %.1f tokens/s)\n",
                num("achieved_gbps"), 100 * num("roofline_fraction"), num("roofline_tokens_per_s"));
  } else {
    std::printf("  bytes per step: not counted for this model class (src/models/step_cost.cpp)\n");
  }
  std::printf("  fp16 GEMM %.2f TFLOP/s at %s", num("gemm_fp16_tflops"), r["gemm_fp16_shape"].dump().c_str());
  if (r.contains("prefill_flops"))
    std::printf("; prefill %.3f TFLOP/s = %.1f%% of it (limit %.1f ms)", num("prefill_tflops"),
                100 * num("prefill_flop_fraction"), num("prefill_limit_ms"));
  std::printf("\n");
  if (r.contains("weight_bytes"))
    std::printf("  memory: weights %.3f GiB (every expert), KV cache %.3f GiB (%lld positions x %lld rows)\n",
                num("weight_bytes") / 1073741824.0, num("kv_cache_bytes") / 1073741824.0,
                static_cast<long long>(r["kv_cache_positions"].get<int64_t>()),
                static_cast<long long>(r["batch"].get<int64_t>()));
  if (r.contains("peak_allocated_bytes")) {
    std::printf("  GPU memory: peak allocated %.2f GiB while loading, %.2f GiB while generating; "
                "in use on the device %.2f GiB\n",
                num("peak_allocated_bytes_load") / 1073741824.0, num("peak_allocated_bytes") / 1073741824.0,
                num("device_memory_used_bytes") / 1073741824.0);
    if (r.contains("peak_over_weights_plus_cache"))
      std::printf("  peak while generating = %.3f x (weights + KV cache)\n",
                  num("peak_over_weights_plus_cache"));
  }
}

}  // namespace

void register_bench_generate(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand(
      "generate", "prefill and decode speed against the measured bandwidth and GEMM roofline");
  cmd->add_option("--config", o->config, "config.json of the model (with --synthetic)");
  cmd->add_flag("--synthetic", o->synthetic, "random weights with the config's shapes, made on the device");
  cmd->add_option("-m,--model", o->model_dir, "a model directory (config.json + safetensors)");
  cmd->add_option("--bits", o->bits, "16, 8 (FP8), 4 (FP4) or 2 (INT2)")->capture_default_str();
  cmd->add_option("--group-size", o->group_size, "quantization group size")->capture_default_str();
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per row")->capture_default_str();
  cmd->add_option("--gen-len", o->gen_len, "new tokens per row (>= 2)")->capture_default_str();
  cmd->add_option("--batch", o->batch, "rows decoded together")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, cuda or cuda:N (default: cuda when present)");
  cmd->add_option("--dtype", o->dtype, "activations and 16-bit weights: f32, f16 or bf16 (default: the config's 16-bit type)");
  cmd->add_option("--warmup", o->warmup, "untimed generate runs first")->capture_default_str();
  cmd->add_option("--runs", o->runs, "timed runs (the median is reported)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the synthetic weights and the prompt")->capture_default_str();
  cmd->add_option("--bandwidth-mib", o->bandwidth_mib,
                  "MiB read to measure the bandwidth (default: 1024 on CUDA, max(1024, 4 x LLC) on the CPU)");
  cmd->add_flag("--json", o->json_output, "print one JSON object instead of text");
  cmd->add_flag("--no-graph", o->no_graph,
                "run every decode step eagerly instead of replaying a captured CUDA graph (to compare)");
  cmd->add_option("--cache-len", o->cache_len,
                  "KV cache positions per row (default: prompt + new tokens); e.g. 32768 to measure "
                  "the memory of a 32k-token cache with a short prompt");
  cmd->callback([o] {
    print_report(run_benchmark(*o), o->json_output, print_text);
#ifdef MARLIN_KERNEL_TRACE
    cuda::dump_kernel_trace();
#endif
  });
}

}  // namespace marlin::cli
