// The marlin command-line tool: one subcommand per file (bench_*.cpp, ...), registered here.
#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.h"
#include "marlin/error.h"

int main(int argc, char** argv) {
  CLI::App app{"marlin: quantized LLM inference on CUDA and CPU"};
  app.require_subcommand(1);
  marlin::cli::register_bench(app);
  marlin::cli::register_tokenize(app);
  marlin::cli::register_preprocess(app);
  marlin::cli::register_generate(app);
  marlin::cli::register_perplexity(app);
  marlin::cli::register_quantize(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const marlin::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
