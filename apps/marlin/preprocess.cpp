// marlin preprocess: an image file through a vision pipeline (qwen2vl or vit) on the CPU or a
// GPU, written as a float32 .npy (and, for qwen2vl, the grid next to it).
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "marlin/image.h"
#include "marlin/npy.h"
#include "marlin/vision.h"

namespace marlin::cli {
namespace {

struct Options {
  std::string image;
  std::string pipeline = "qwen2vl";
  std::string device = "cpu";
  std::string out;
  int64_t min_pixels = vision::Qwen2VLOptions{}.min_pixels;
  int64_t max_pixels = vision::Qwen2VLOptions{}.max_pixels;
  int64_t size = 224;
};

// "x.npy" -> "x_grid_thw.npy"
std::string grid_path(const std::string& out) {
  const std::string stem = out.size() > 4 && out.ends_with(".npy") ? out.substr(0, out.size() - 4) : out;
  return stem + "_grid_thw.npy";
}

void run(const Options& o) {
  const Device device = Device::parse(o.device);
  // Decoded as stored (gray, RGB or RGBA); the pipelines convert to RGB as the processors do.
  const Tensor image = load_image(o.image).to(device);
  if (o.pipeline == "qwen2vl") {
    vision::Qwen2VLOptions options;
    options.min_pixels = o.min_pixels;
    options.max_pixels = o.max_pixels;
    options.nhwc = true;
    const vision::Qwen2VLInputs inputs = vision::preprocess_qwen2vl(image, options);
    save_npy(o.out, inputs.pixel_values);
    save_npy(grid_path(o.out), inputs.image_grid_thw);
    const int64_t* grid = inputs.image_grid_thw.data<int64_t>();
    std::printf("%s: %lldx%lld -> pixel_values %s, grid_thw (%lld, %lld, %lld) -> %s, %s\n", o.image.c_str(),
                static_cast<long long>(image.size(0)), static_cast<long long>(image.size(1)),
                shape_str(inputs.pixel_values.shape()).c_str(), static_cast<long long>(grid[0]),
                static_cast<long long>(grid[1]), static_cast<long long>(grid[2]), o.out.c_str(),
                grid_path(o.out).c_str());
  } else if (o.pipeline == "vit") {
    vision::VitOptions options;
    options.height = options.width = o.size;
    options.nhwc = true;
    const Tensor pixels = vision::preprocess_for_vit(image, options);
    save_npy(o.out, pixels);
    std::printf("%s: %lldx%lld -> %s -> %s\n", o.image.c_str(), static_cast<long long>(image.size(0)),
                static_cast<long long>(image.size(1)), shape_str(pixels.shape()).c_str(), o.out.c_str());
  } else {
    fail("preprocess", "unknown pipeline '", o.pipeline, "' (qwen2vl or vit)");
  }
}

}  // namespace

void register_preprocess(CLI::App& app) {
  auto opts = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("preprocess", "an image file through a vision pipeline into a float32 .npy");
  cmd->add_option("--image", opts->image, "JPEG or PNG file")->required();
  cmd->add_option("--pipeline", opts->pipeline, "qwen2vl (Qwen2-VL image processor) or vit (resize + ImageNet normalize)")
      ->capture_default_str();
  cmd->add_option("--device", opts->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--out", opts->out, "output .npy (qwen2vl also writes <out>_grid_thw.npy)")->required();
  cmd->add_option("--min-pixels", opts->min_pixels, "qwen2vl: smallest resized pixel count")->capture_default_str();
  cmd->add_option("--max-pixels", opts->max_pixels,
                  "qwen2vl: largest resized pixel count (Transformers' default; the original API used 1048576)")
      ->capture_default_str();
  cmd->add_option("--size", opts->size, "vit: square output side")->capture_default_str();
  cmd->callback([opts] { run(*opts); });
}

}  // namespace marlin::cli
