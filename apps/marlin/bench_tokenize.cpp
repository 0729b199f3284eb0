// marlin bench tokenize: encode throughput of one thread on a text file, in MB/s of UTF-8 input.
// The word cache is warm after the first run, as it is in a long-running server.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "bench.h"
#include "marlin/error.h"
#include "marlin/timing.h"
#include "marlin/tokenizer.h"

namespace marlin::cli {
namespace {

struct BenchTokenizeOptions {
  std::string model;
  std::string file;
  int iters = 5;
};

void run(const BenchTokenizeOptions& opts) {
  std::ifstream in(opts.file, std::ios::binary);
  if (!in) fail("bench tokenize", "cannot open text file ", opts.file);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (text.empty()) fail("bench tokenize", "text file ", opts.file, " is empty");

  const auto load_start = std::chrono::steady_clock::now();
  const Tokenizer tokenizer = Tokenizer::from_dir(opts.model);
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();

  size_t tokens = 0;
  const std::vector<double> ms = time_runs(Device::cpu(), 1, opts.iters, [&] {
    tokens = tokenizer.encode(text, false).size();
  });
  const double median_ms = median(ms);
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("tokenizer: %s (loaded in %.0f ms)\n", opts.model.c_str(), load_ms);
  std::printf("text: %s, %.2f MB, %zu tokens (%.2f bytes/token)\n", opts.file.c_str(), mb, tokens,
              static_cast<double>(text.size()) / static_cast<double>(tokens));
  std::printf("encode whole text, 1 thread: median %.1f ms over %d runs = %.2f MB/s, %.2f M tokens/s\n",
              median_ms, opts.iters, mb / (median_ms / 1e3),
              static_cast<double>(tokens) / 1e6 / (median_ms / 1e3));

  // Line by line, as a server sees many short prompts.
  std::vector<std::string_view> lines;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    end = end == std::string::npos ? text.size() : end + 1;
    lines.emplace_back(text.data() + begin, end - begin);
    begin = end;
  }
  const double lines_ms = median(time_runs(Device::cpu(), 1, opts.iters, [&] {
    for (const std::string_view line : lines) tokenizer.encode(line, false);
  }));
  std::printf("encode line by line (%zu lines), 1 thread: median %.1f ms = %.2f MB/s\n",
              lines.size(), lines_ms, mb / (lines_ms / 1e3));
}

}  // namespace

void register_bench_tokenize(CLI::App& bench) {
  auto opts = std::make_shared<BenchTokenizeOptions>();
  CLI::App* cmd = bench.add_subcommand("tokenize", "tokenizer encode throughput (one thread)");
  cmd->add_option("--model", opts->model, "model directory with tokenizer.json")->required();
  cmd->add_option("--file", opts->file, "UTF-8 text file to encode")->required();
  cmd->add_option("--iters", opts->iters, "timed runs")->capture_default_str();
  cmd->callback([opts] { run(*opts); });
}

}  // namespace marlin::cli
