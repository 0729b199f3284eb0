// marlin bench moe: one MoE layer of a config's shapes with random weights on the GPU, timed
// through dispatch_moe_decode (one token) and dispatch_moe_optimized (more), against the bytes a
// call must read, the device-to-device copy bandwidth and a dense 16-bit baseline (cuBLAS GEMMs
// of the same experts), all measured in one run. Calls rotate among copies of the layer so that
// the GPU's L2 never holds the weights a call reads, as in a real model (GLM-4.7-Flash: 46 MoE
// layers between two uses of one).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "bench.h"
#include "bench_common.h"
#include "marlin/allocator.h"
#include "marlin/kernel_library.h"
#include "marlin/model.h"
#include "marlin/moe.h"
#include "marlin/ops.h"
#include "marlin/stream.h"
#include "marlin/timing.h"
#include "models/step_cost.h"
#include "nn/moe_plan.h"
#ifdef MARLIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace marlin::cli {
namespace {

using json = nlohmann::json;
constexpr const char* kOp = "bench moe";

struct Options {
  std::string config = "bench/configs/glm-4.7-flash.json";
  int bits = 4;
  int group_size = 128;
  std::string tokens = "1,4,16,64";
  int iters = 50;
  std::string dtype = "bf16";
  double rotate_mib = 512;  // bytes read by consecutive calls before a weight is read again
  uint64_t seed = 0;
  bool json_output = false;
  bool eager = false;  // time each call between two events instead of graph replays
};

std::vector<int64_t> parse_tokens(const std::string& list) {
  std::vector<int64_t> out;
  for (const std::string& item : split(list, ',')) {
    size_t used = 0;
    int64_t t = 0;
    try {
      t = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MARLIN_CHECK(used == item.size() && t >= 1, kOp, "--tokens takes positive integers, got '",
                 item, "' in '", list, "'");
    out.push_back(t);
  }
  MARLIN_CHECK(!out.empty(), kOp, "--tokens is empty");
  return out;
}

size_t free_device_memory(Device device) {
#ifdef MARLIN_WITH_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(device.index) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
    return free_b;
#endif
  (void)device;
  return 0;  // unknown
}

size_t allocated_bytes(Device device) {
  device_synchronize(device.index);
  return CudaCachingAllocator::instance().stats(device.index).allocated_bytes;
}

// Mean number of distinct experts the tokens of x choose in each copy of the layer (the
// routing the timed calls run: same weights, same inputs).
double mean_distinct_experts(const std::vector<std::shared_ptr<const MoE>>& layers,
                             const std::vector<Tensor>& inputs) {
  double sum = 0;
  for (size_t c = 0; c < layers.size(); ++c) {
    const Tensor ids = layers[c]->route(inputs[c]).ids.to(Device::cpu()).contiguous();
    const int32_t* p = ids.data<int32_t>();
    sum += static_cast<double>(std::set<int32_t>(p, p + ids.numel()).size());
  }
  return sum / static_cast<double>(layers.size());
}

// The dense baseline's weights: `count` experts of [H, 2I] (gate and up side by side, one GEMM)
// and [I, H] in the activation dtype. Calls take consecutive experts of the pool, which is large
// enough that no call finds the previous ones' weights in L2.
struct DensePool {
  std::vector<Tensor> gate_up, down;
  size_t next = 0;
};

DensePool make_dense_pool(int64_t count, int64_t H, int64_t I, DType dtype, Device device, uint64_t seed) {
  DensePool pool;
  for (int64_t e = 0; e < count; ++e) {
    pool.gate_up.push_back(ops::random_normal({H, 2 * I}, dtype, device, seed + 2 * e, 0.02f));
    pool.down.push_back(ops::random_normal({I, H}, dtype, device, seed + 2 * e + 1, 0.02f));
  }
  return pool;
}

json run_benchmark(const Options& o) {
  MARLIN_CHECK(o.bits == 8 || o.bits == 4 || o.bits == 2, kOp,
               "--bits must be 8 (FP8), 4 (FP4) or 2 (INT2), got ", o.bits,
               " (the fused MoE paths need every expert quantized)");
  MARLIN_CHECK(o.dtype == "bf16" || o.dtype == "f16", kOp, "--dtype must be bf16 or f16, got '",
               o.dtype, "'");
  MARLIN_CHECK(o.iters >= 1 && o.rotate_mib > 0, kOp, "need --iters >= 1 and --rotate-mib > 0");
  const std::vector<int64_t> tokens = parse_tokens(o.tokens);
  const ModelConfig config = load_model_config(o.config);
  MARLIN_CHECK(config.moe.has_value(), kOp, o.config, " has no MoE layers (n_routed_experts / num_experts)");
  // After the config checks, so they can be tried on any machine.
  MARLIN_CHECK(cuda_available(), kOp, "needs a CUDA device: dispatch_moe_decode and "
               "dispatch_moe_optimized run on the GPU only (",
               cuda_compiled() ? "this build has the CUDA backend but no device was found"
                               : "this build has no CUDA backend", ")");
  const MoeConfig& mc = *config.moe;
  const Device device = Device::cuda(0);
  const DType act = o.dtype == "f16" ? DType::f16 : DType::bf16;
  const int64_t H = config.hidden_size, I = mc.moe_intermediate_size, E = mc.num_experts;
  const int64_t k = std::min(mc.num_experts_per_tok, E), n_shared = mc.n_shared_experts;

  // Before the layers, so the copy runs on an empty device.
  const double copy_gbps = measure_copy_bandwidth(device);
  CudaCachingAllocator::instance().empty_cache();

  ModelLoadOptions lo;
  lo.device = device;
  lo.dtype = act;
  lo.bits = o.bits;
  lo.group_size = o.group_size;
  const auto load_start = std::chrono::steady_clock::now();
  const size_t before = allocated_bytes(device);
  std::vector<std::shared_ptr<const MoE>> layers{load_synthetic_moe(config, lo, o.seed)};
  const size_t layer_resident = allocated_bytes(device) - before;  // packed, scales, tiled copies
  MARLIN_CHECK(layers[0]->device_plan() != nullptr, kOp, "the layer has no fused CUDA plan");
  // Copies: enough that one token's calls read rotate_mib before coming back to a layer, at
  // most 64 and at most half the free memory (the baseline and the activations need the rest).
  // Less than one token's bytes: one copy, whose chosen experts can then stay in L2 between
  // calls (the kernels' time without most of DRAM's).
  const DecodeStepBytes one_token = moe_call_bytes(*layers[0], static_cast<double>(k));
  const double one_token_bytes = static_cast<double>(one_token.quantized_weights + one_token.dense_weights);
  int64_t copies = static_cast<int64_t>(std::ceil(o.rotate_mib * 1048576.0 / one_token_bytes));
  copies = std::clamp<int64_t>(copies, o.rotate_mib * 1048576.0 < one_token_bytes ? 1 : 2, 64);
  if (const size_t free_b = free_device_memory(device); free_b > 0 && layer_resident > 0)
    copies = std::clamp<int64_t>(static_cast<int64_t>(free_b / 2 / layer_resident), 1, copies);
  for (int64_t c = 1; c < copies; ++c) layers.push_back(load_synthetic_moe(config, lo, o.seed + static_cast<uint64_t>(c)));
  device_synchronize(device.index);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  // The dense pool: twice the most experts one call can use, and at least rotate_mib.
  const int64_t t_max = *std::max_element(tokens.begin(), tokens.end());
  const int64_t most_per_call = std::min(E, t_max * k) + n_shared;
  const int64_t dense_expert_bytes = 3 * H * I * static_cast<int64_t>(dtype_size(act));
  const int64_t pool_size = std::max<int64_t>(
      2 * most_per_call, static_cast<int64_t>(std::ceil(o.rotate_mib * 1048576.0 / static_cast<double>(dense_expert_bytes))));
  DensePool pool = make_dense_pool(pool_size, H, I, act, device, o.seed + 1000003);

  KernelLibrary& lib = default_library();
  // time_runs records its events on the current stream; the dispatch runs on lib's.
  StreamGuard guard(lib.stream());
  json rows = json::array();
  for (const int64_t T : tokens) {
    std::vector<Tensor> inputs;
    for (int64_t c = 0; c < copies; ++c)
      inputs.push_back(ops::random_normal({T, H}, act, device, o.seed * 7919 + static_cast<uint64_t>(T * 1000 + c), 1.0f));
    const double distinct = mean_distinct_experts(layers, inputs);
    const DecodeStepBytes b = moe_call_bytes(*layers[0], distinct);
    const double bytes = static_cast<double>(b.quantized_weights + b.dense_weights);
    // Graph-timed (as a decode step runs the layer), the calls go to the capturing stream; eager,
    // through the original API's entry points on the library's stream.
    const double ms = time_rotating(device, o.iters, static_cast<int>(copies), o.eager, [&](int c) {
      const size_t i = static_cast<size_t>(c);
      if (o.eager) {
        if (T == 1) dispatch_moe_decode(lib, inputs[i], *layers[i]);
        else dispatch_moe_optimized(lib, inputs[i], *layers[i]);
      } else if (T == 1) {
        moe_decode_on_current_stream(inputs[i], *layers[i]);
      } else {
        moe_grouped_on_current_stream(inputs[i], *layers[i]);
      }
    });

    // Baseline: the same experts as dense GEMMs, the routed ones at the tokens each gets on
    // average, the shared ones (as n_shared experts of width I: the same bytes) at all T.
    const int64_t routed = std::max<int64_t>(1, std::llround(distinct));
    const int64_t m_routed = (T * k + routed - 1) / routed;
    const Tensor a_routed = ops::random_normal({m_routed, H}, act, device, 5, 1.0f);
    const Tensor h_routed = ops::random_normal({m_routed, I}, act, device, 6, 1.0f);
    const Tensor a_shared = ops::random_normal({T, H}, act, device, 7, 1.0f);
    const Tensor h_shared = ops::random_normal({T, I}, act, device, 8, 1.0f);
    const double dense_ms = time_rotating(device, o.iters, 1, o.eager, [&](int) {
      for (int64_t e = 0; e < routed + n_shared; ++e) {
        const size_t p = pool.next++ % pool.gate_up.size();
        ops::gemm(e < routed ? a_routed : a_shared, pool.gate_up[p]);
        ops::gemm(e < routed ? h_routed : h_shared, pool.down[p]);
      }
    });
    const double dense_bytes = static_cast<double>((routed + n_shared) * dense_expert_bytes);
    const double gbps = bytes / (ms * 1e-3) / 1e9;
    rows.push_back({{"tokens", T},
                    {"path", T == 1 ? "dispatch_moe_decode" : "dispatch_moe_optimized"},
                    {"distinct_experts", distinct},
                    {"distinct_experts_bound", std::min(E, T * k)},
                    {"distinct_experts_expected_uniform", expected_distinct_experts(E, k, T)},
                    {"bytes", bytes},
                    {"routed_expert_bytes", b.routed_experts},
                    {"time_us", ms * 1e3},
                    {"gbps", gbps},
                    {"copy_fraction", gbps / copy_gbps},
                    {"dense_experts", routed + n_shared},
                    {"dense_tokens_per_routed_expert", m_routed},
                    {"dense_bytes", dense_bytes},
                    {"dense_time_us", dense_ms * 1e3},
                    {"dense_gbps", dense_bytes / (dense_ms * 1e-3) / 1e9},
                    {"speedup_over_dense", dense_ms / ms}});
  }

  json r;
  r["command"] = "bench moe";
  r["config"] = o.config;
  r["model_type"] = std::string(model_type_name(config.model_type));
  r["device"] = device.str();
  r["device_name"] = device_name(device);
  r["hidden_size"] = H;
  r["moe_intermediate_size"] = I;
  r["num_experts"] = E;
  r["top_k"] = k;
  r["n_shared_experts"] = n_shared;
  r["bits"] = o.bits;
  r["group_size"] = o.group_size;
  r["dtype"] = o.dtype;
  r["iters"] = o.iters;
  r["timing"] = o.eager ? "median of " + std::to_string(o.iters) + " calls, each between two CUDA events"
                        : "time per call in a replayed CUDA graph of " + std::to_string(o.iters) +
                              " calls (median of 5 replays)";
  r["layer_copies"] = copies;
  r["layer_resident_bytes"] = layer_resident;
  r["one_token_bytes"] = one_token_bytes;
  r["dense_pool_experts"] = pool_size;
  r["load_s"] = load_s;
  r["copy_gbps"] = copy_gbps;
  r["rows"] = rows;
  return r;
}

void print_text(const json& r) {
  std::printf("marlin bench moe: %s (%s) on %s (%s)\n", r["config"].get<std::string>().c_str(),
              r["model_type"].get<std::string>().c_str(), r["device"].get<std::string>().c_str(),
              r["device_name"].get<std::string>().c_str());
  std::printf("  hidden %lld, %lld experts of %lld (top %lld), %lld shared of %lld; %d-bit weights, "
              "group %d, %s activations, %s\n",
              static_cast<long long>(r["hidden_size"].get<int64_t>()),
              static_cast<long long>(r["num_experts"].get<int64_t>()),
              static_cast<long long>(r["moe_intermediate_size"].get<int64_t>()),
              static_cast<long long>(r["top_k"].get<int64_t>()),
              static_cast<long long>(r["n_shared_experts"].get<int64_t>()),
              static_cast<long long>(r["moe_intermediate_size"].get<int64_t>()), r["bits"].get<int>(),
              r["group_size"].get<int>(), r["dtype"].get<std::string>().c_str(), r["timing"].get<std::string>().c_str());
  const int64_t copies = r["layer_copies"].get<int64_t>();
  std::printf("  %lld %s of the layer (%.2f GiB on the device each, built in %.1f s)%s\n",
              static_cast<long long>(copies), copies == 1 ? "copy" : "copies",
              r["layer_resident_bytes"].get<double>() / 1073741824.0, r["load_s"].get<double>(),
              copies == 1 ? ", called again and again: the chosen experts' weights can stay in L2"
                          : " rotated so L2 never holds a call's weights");
  std::printf("  device-to-device copy bandwidth: %.0f GB/s (read + write)\n", r["copy_gbps"].get<double>());
  std::printf("%6s %-23s %8s %9s %9s %8s %7s %9s %10s %8s\n", "tokens", "path", "experts", "MB/call",
              "time_us", "GB/s", "%copy", "dense_us", "dense_GB/s", "speedup");
  for (const json& row : r["rows"])
    std::printf("%6lld %-23s %8.2f %9.2f %9.1f %8.0f %6.1f%% %9.1f %10.0f %7.2fx\n",
                static_cast<long long>(row["tokens"].get<int64_t>()),
                row["path"].get<std::string>().c_str(), row["distinct_experts"].get<double>(),
                row["bytes"].get<double>() / 1e6, row["time_us"].get<double>(), row["gbps"].get<double>(),
                100 * row["copy_fraction"].get<double>(), row["dense_time_us"].get<double>(),
                row["dense_gbps"].get<double>(), row["speedup_over_dense"].get<double>());
  std::printf("  experts: distinct routed experts the call's tokens chose (measured, mean over the copies; "
              "top_k for one token).\n"
              "  MB/call: router (f32) + score bias + shared experts + those experts' packed weights and "
              "scales.\n"
              "  dense: cuBLAS GEMMs of the same experts in 16 bits (gate+up, down; no router or "
              "activation), routed at ceil(T*top_k / experts) rows each.\n");
}

}  // namespace

void register_bench_moe(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand(
      "moe", "one MoE layer (dispatch_moe_decode / dispatch_moe_optimized) against the measured bandwidth");
  cmd->add_option("--config", o->config, "config.json with the MoE shapes")->capture_default_str();
  cmd->add_option("--bits", o->bits, "expert weights: 8 (FP8), 4 (FP4) or 2 (INT2)")->capture_default_str();
  cmd->add_option("--group-size", o->group_size, "quantization group size")->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "comma-separated tokens per call (1: dispatch_moe_decode)")
      ->capture_default_str();
  cmd->add_option("--iters", o->iters, "timed calls per measurement (the median is reported)")
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "activations and the dense baseline: bf16 or f16")->capture_default_str();
  cmd->add_option("--rotate-mib", o->rotate_mib,
                  "MiB one token's calls read before reusing a layer copy (defeats L2); less than one "
                  "token's bytes (say 1): one copy, whose weights L2 can keep")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the synthetic weights and inputs")->capture_default_str();
  cmd->add_flag("--eager", o->eager,
                "time each call between two CUDA events (host launch time included) instead of per call "
                "of a replayed CUDA graph");
  cmd->add_flag("--json", o->json_output, "print one JSON object instead of text");
  cmd->callback([o] { print_report(run_benchmark(*o), o->json_output, print_text); });
}

}  // namespace marlin::cli
