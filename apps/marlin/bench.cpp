#include "commands.h"
namespace marlin::cli {
void register_bench(CLI::App& app) { app.add_subcommand("bench", "benchmarks"); }
}
