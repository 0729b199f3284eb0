// Registration of the CLI's subcommands; each lives in its own file.
#pragma once

#include <CLI/CLI.hpp>

namespace marlin::cli {
void register_bench(CLI::App& app);
}  // namespace marlin::cli
