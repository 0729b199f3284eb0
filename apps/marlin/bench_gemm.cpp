// marlin bench gemm: quantized GEMM time, weight+scale bandwidth and speedup over the fp16
// baseline (cuBLAS on CUDA, our dense GEMM on the CPU), all measured in one run. Weights rotate
// among enough copies that the GPU's L2 cache never holds them.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bench.h"
#include "bench_common.h"
#include "marlin/ops.h"
#include "marlin/timing.h"

namespace marlin::cli {
namespace {

struct Options {
  std::string shapes = "4096x4096,4096x14336,14336x4096,8192x28672,2048x1536,1536x2048";
  std::string ms = "1,16,32,64,1024";
  std::string formats = "fp4,fp8,int2";
  int group_size = 128;
  std::string device;
  int iters = 50;
  double rotate_mib = 512;  // bytes of weight copies to cycle through per measurement
  std::string dtype = "f16";  // activations (and the dense baseline)
  bool eager = false;  // time each launch between two events instead of graph replays
};

const char* short_name(QuantFormat f) {
  return f == QuantFormat::fp4_e2m1 ? "fp4" : f == QuantFormat::fp8_e4m3 ? "fp8" : "int2";
}

QuantFormat parse_format(const std::string& name) {
  if (name == "fp4") return QuantFormat::fp4_e2m1;
  if (name == "fp8") return QuantFormat::fp8_e4m3;
  if (name == "int2") return QuantFormat::int2;
  fail("bench gemm", "unknown format '", name, "' (fp4, fp8, int2)");
}

int copies_for(double bytes, double rotate_mib, Device device) {
  if (device.is_cpu()) return 1;
  return static_cast<int>(std::clamp(rotate_mib * 1048576.0 / bytes, 1.0, 64.0) + 0.999);
}

void run(const Options& o) {
  const Device device = o.device.empty() ? (cuda_available() ? Device::cuda(0) : Device::cpu())
                                         : Device::parse(o.device);
  std::vector<int64_t> ms;
  for (const auto& m : split(o.ms, ',')) ms.push_back(std::stoll(m));
  std::vector<QuantFormat> formats;
  for (const auto& f : split(o.formats, ',')) formats.push_back(parse_format(f));
  MARLIN_CHECK(o.dtype == "f16" || o.dtype == "bf16", "bench gemm", "--dtype must be f16 or bf16, got '",
               o.dtype, "'");
  const DType act = o.dtype == "f16" ? DType::f16 : DType::bf16;
  const double copy_bw = measure_copy_bandwidth(device);
  std::printf("marlin bench gemm on %s, %s activations, group_size %d, %s\n", device.str().c_str(),
              o.dtype.c_str(), o.group_size,
              device.is_cuda() && !o.eager ? "time per launch in a replayed CUDA graph (median of 5 replays)"
                                           : "median of the timed runs");
  if (copy_bw > 0) std::printf("device-to-device copy bandwidth: %.0f GB/s (read + write)\n", copy_bw);
  std::printf("%-12s %6s %-5s %10s %10s %10s %9s\n", "K x N", "M", "fmt", "time_us", "GB/s", "fp16_us",
              "speedup");
  for (const auto& shape : split(o.shapes, ',')) {
    const auto kn = split(shape, 'x');
    MARLIN_CHECK(kn.size() == 2, "bench gemm", "bad shape '", shape, "': expected KxN");
    const int64_t K = std::stoll(kn[0]), N = std::stoll(kn[1]);
    const double dense_bytes = 2.0 * static_cast<double>(K * N);
    const int dense_copies = copies_for(dense_bytes, o.rotate_mib, device);
    std::vector<Tensor> dense;
    for (int c = 0; c < dense_copies; ++c) dense.push_back(ops::random_normal({K, N}, act, device, 100 + c, 0.02f));
    std::vector<std::vector<QuantizedWeight>> quantized;
    for (QuantFormat f : formats) {
      std::vector<QuantizedWeight> copies;
      const Tensor w = ops::random_normal({K, N}, DType::f16, device, 7, 0.02f);
      QuantizedWeight q = ops::quantize(w, f, {.group_size = o.group_size});
      ops::prepare_for_gemm(q);
      const int n_copies = copies_for(static_cast<double>(q.nbytes()), o.rotate_mib, device);
      copies.push_back(q);
      for (int c = 1; c < n_copies; ++c) {
        QuantizedWeight copy = q;
        copy.packed = q.packed.clone();
        copy.scales = q.scales.clone();
        if (q.tiled.defined()) copy.tiled = q.tiled.clone();
        copies.push_back(copy);
      }
      quantized.push_back(std::move(copies));
    }
    for (int64_t M : ms) {
      const Tensor A = ops::random_normal({M, K}, act, device, 3);
      const double dense_ms = time_rotating(device, o.iters, dense_copies, o.eager, [&](int c) { ops::gemm(A, dense[static_cast<size_t>(c)]); });
      std::printf("%-12s %6lld %-5s %10.1f %10.0f %10.1f %9s\n", shape.c_str(), static_cast<long long>(M),
                  o.dtype == "f16" ? "fp16" : "bf16", dense_ms * 1e3, dense_bytes / (dense_ms * 1e-3) / 1e9, dense_ms * 1e3, "1.00x");
      for (size_t fi = 0; fi < formats.size(); ++fi) {
        const auto& copies = quantized[fi];
        const double q_ms = time_rotating(device, o.iters, static_cast<int>(copies.size()), o.eager,
                                          [&](int c) { ops::gemm_q(A, copies[static_cast<size_t>(c)]); });
        const double bytes = static_cast<double>(copies[0].nbytes());
        char speedup[32];
        std::snprintf(speedup, sizeof speedup, "%.2fx", dense_ms / q_ms);
        std::printf("%-12s %6lld %-5s %10.1f %10.0f %10.1f %9s\n", shape.c_str(), static_cast<long long>(M),
                    short_name(formats[fi]), q_ms * 1e3,
                    bytes / (q_ms * 1e-3) / 1e9, dense_ms * 1e3, speedup);
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

void register_bench_gemm(CLI::App& bench) {
  auto opts = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("gemm", "quantized GEMM against fp16 (cuBLAS on CUDA)");
  cmd->add_option("--shapes", opts->shapes, "comma-separated KxN weight shapes")->capture_default_str();
  cmd->add_option("--m", opts->ms, "comma-separated batch sizes M")->capture_default_str();
  cmd->add_option("--formats", opts->formats, "fp4,fp8,int2")->capture_default_str();
  cmd->add_option("--group-size", opts->group_size, "quantization group size")->capture_default_str();
  cmd->add_option("--device", opts->device, "cpu, cuda or cuda:N (default: cuda when present)");
  cmd->add_option("--iters", opts->iters, "timed runs per measurement")->capture_default_str();
  cmd->add_option("--dtype", opts->dtype, "activation dtype: f16 or bf16")->capture_default_str();
  cmd->add_option("--rotate-mib", opts->rotate_mib, "MiB of weight copies to rotate through (defeats L2)")->capture_default_str();
  cmd->add_flag("--eager", opts->eager,
                 "CUDA: time each launch between two events (counts the host's launch overhead) instead of graph replays");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace marlin::cli
