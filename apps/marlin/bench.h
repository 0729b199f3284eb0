// The `marlin bench` subcommands.
#pragma once

#include <CLI/CLI.hpp>

namespace marlin::cli {
void register_bench_gemm(CLI::App& bench);  // bench_gemm.cpp
void register_bench_vision(CLI::App& bench);  // bench_vision.cpp
void register_bench_tokenize(CLI::App& bench);  // bench_tokenize.cpp
void register_bench_generate(CLI::App& bench);  // bench_generate.cpp
void register_bench_moe(CLI::App& bench);  // bench_moe.cpp
}  // namespace marlin::cli
