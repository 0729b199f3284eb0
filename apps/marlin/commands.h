// Registration of the CLI's subcommands; each lives in its own file.
#pragma once

#include <CLI/CLI.hpp>

namespace marlin::cli {
void register_bench(CLI::App& app);     // bench.cpp
void register_tokenize(CLI::App& app);  // tokenize.cpp
void register_preprocess(CLI::App& app);  // preprocess.cpp
void register_generate(CLI::App& app);  // generate.cpp: generate and score
void register_perplexity(CLI::App& app);  // perplexity.cpp
void register_quantize(CLI::App& app);  // quantize.cpp
}  // namespace marlin::cli
