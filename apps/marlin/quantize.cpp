// marlin quantize: a model directory quantized once and saved (save_quantized), so later runs
// load the packed weights instead of quantizing at every start. --skip keeps chosen linear
// layers 16-bit (listed in the saved quantization_config.modules_not_converted).
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "marlin/error.h"
#include "marlin/model.h"

namespace marlin::cli {
namespace {

struct QuantizeCommand {
  std::string dir, out, scales = "rtn";
  int bits = 4;
  int group_size = 128;
  std::vector<std::string> skip;
};

void run_quantize(const QuantizeCommand& o) {
  constexpr const char* op = "marlin quantize";
  if (!std::filesystem::is_directory(o.dir)) fail(op, "model directory '", o.dir, "' not found");
  if (o.bits != 16 && o.bits != 8 && o.bits != 4 && o.bits != 2)
    fail(op, "--bits must be 16, 8, 4 or 2, got ", o.bits);
  if (o.scales != "rtn" && o.scales != "mse") fail(op, "--scales must be rtn or mse, got '", o.scales, "'");
  ModelLoadOptions options;
  options.bits = o.bits;
  options.group_size = o.group_size;
  options.scales = o.scales == "mse" ? ScaleMethod::mse : ScaleMethod::absmax;
  options.modules_not_converted = o.skip;
  const auto model = load_model(o.dir, options);
  save_quantized(*model, o.out);
  std::cout << "saved " << o.dir << " at " << o.bits << " bits (group size " << o.group_size
            << ", " << o.scales << " scales) to " << o.out << "\n";
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeCommand>();
  CLI::App* cmd = app.add_subcommand("quantize", "quantize a model directory and save it");
  cmd->add_option("-m,--model", o->dir, "model directory (config.json + safetensors)")->required();
  cmd->add_option("-o,--out", o->out, "output directory")->required();
  cmd->add_option("--bits", o->bits, "8, 4, 2 (FP8 E4M3, FP4 E2M1, INT2) or 16 (a plain copy)");
  cmd->add_option("--group-size", o->group_size, "quantization group size along K");
  cmd->add_option("--scales", o->scales, "rtn (round-to-nearest) or mse (least squared error)");
  cmd->add_option("--skip", o->skip,
                  "keep the linear layers whose module path contains this (e.g. mlp.down_proj, "
                  "model.layers.0.) in 16 bits; repeatable");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace marlin::cli
