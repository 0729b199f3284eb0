// marlin bench: kernel and end-to-end benchmarks, each printing its baseline from the same run.
#include "bench.h"
#include "commands.h"

namespace marlin::cli {

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "benchmarks (baselines measured in the same run)");
  bench->require_subcommand(1);
  register_bench_gemm(*bench);
  register_bench_vision(*bench);
  register_bench_tokenize(*bench);
  register_bench_generate(*bench);
  register_bench_moe(*bench);
}

}  // namespace marlin::cli
