// marlin bench vision: a batch of decoded images (default 32 x 1920x1080 RGB, HWC as decoders
// give them) through preprocess_for_vit and preprocess_qwen2vl on the device; prints images/s
// and the bandwidth of the bytes each pipeline must move against the device's copy bandwidth.
// tools/bench_vision_torch.py times torchvision's GPU tensor path on the same sizes.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench.h"
#include "marlin/image.h"
#include "marlin/timing.h"
#include "marlin/vision.h"

namespace marlin::cli {
namespace {

struct Options {
  int64_t batch = 32;
  int64_t height = 1080;
  int64_t width = 1920;
  std::string image;  // a JPEG/PNG to replicate instead of the synthetic pattern
  std::string device;
  int iters = 20;
};

// One photo-sized u8 HWC image: a smooth pattern with texture, never flat.
Tensor synthetic_image(int64_t h, int64_t w) {
  std::vector<uint8_t> px(static_cast<size_t>(h * w * 3));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t c = 0; c < 3; ++c)
        px[static_cast<size_t>((y * w + x) * 3 + c)] =
            static_cast<uint8_t>((x * (c + 1) + y * 2 + ((x ^ y) & 15) * 5) & 255);
  return Tensor::from_vector(px, {h, w, 3}, DType::u8);
}

double measure_copy_bandwidth(Device device) {
  if (device.is_cpu()) return 0;
  const int64_t n = int64_t{1} << 28;
  Tensor a = Tensor::empty({n}, DType::f32, device), b = Tensor::empty({n}, DType::f32, device);
  a.fill_bytes(1);
  const double ms = median(time_runs(device, 2, 10, [&] { b.copy_from(a); }));
  return 2.0 * static_cast<double>(a.nbytes()) / (ms * 1e-3) / 1e9;
}

void report(const char* name, double ms, int64_t batch, double bytes, double copy_bw) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-22s %10.3f %12.1f %10.0f", name, ms, static_cast<double>(batch) / (ms * 1e-3), gbs);
  if (copy_bw > 0) std::printf(" %8.0f%%", 100.0 * gbs / copy_bw);
  std::printf("\n");
}

void run(const Options& o) {
  const Device device = o.device.empty() ? (cuda_available() ? Device::cuda(0) : Device::cpu())
                                         : Device::parse(o.device);
  const Tensor one = o.image.empty() ? synthetic_image(o.height, o.width) : load_image(o.image, 3);
  const int64_t h = one.size(0), w = one.size(1);
  Tensor host_batch = Tensor::empty({o.batch, h, w, 3}, DType::u8);
  for (int64_t n = 0; n < o.batch; ++n) host_batch.select(0, n).copy_from(one);
  const Tensor batch = host_batch.to(device);
  const double copy_bw = measure_copy_bandwidth(device);
  const double in_bytes = static_cast<double>(batch.nbytes());
  std::printf("marlin bench vision on %s: %lld images of %lldx%lld u8 HWC, %d timed runs (median)\n",
              device.str().c_str(), static_cast<long long>(o.batch), static_cast<long long>(w),
              static_cast<long long>(h), o.iters);
  if (copy_bw > 0) std::printf("device-to-device copy bandwidth: %.0f GB/s (read + write)\n", copy_bw);
  std::printf("%-22s %10s %12s %10s %9s\n", "pipeline", "ms", "images/s", "GB/s", "of copy");

  vision::VitOptions vit;
  vit.nhwc = true;
  Tensor vit_out;
  const double vit_ms = median(time_runs(device, 3, o.iters, [&] { vit_out = vision::preprocess_for_vit(batch, vit); }));
  report("preprocess_for_vit", vit_ms, o.batch, in_bytes + static_cast<double>(vit_out.nbytes()), copy_bw);

  vision::Qwen2VLOptions qwen;
  qwen.nhwc = true;
  vision::Qwen2VLInputs qwen_out;
  const double qwen_ms = median(time_runs(device, 3, o.iters, [&] { qwen_out = vision::preprocess_qwen2vl(batch, qwen); }));
  report("preprocess_qwen2vl", qwen_ms, o.batch, in_bytes + static_cast<double>(qwen_out.pixel_values.nbytes()), copy_bw);
  std::printf("qwen2vl pixel_values %s per batch (grid %lld x %lld patches per image)\n",
              shape_str(qwen_out.pixel_values.shape()).c_str(),
              static_cast<long long>(qwen_out.image_grid_thw.data<int64_t>()[1]),
              static_cast<long long>(qwen_out.image_grid_thw.data<int64_t>()[2]));
}

}  // namespace

void register_bench_vision(CLI::App& bench) {
  auto opts = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("vision", "preprocess_for_vit and preprocess_qwen2vl on a batch of images");
  cmd->add_option("--batch", opts->batch, "images per batch")->capture_default_str();
  cmd->add_option("--height", opts->height, "synthetic image height")->capture_default_str();
  cmd->add_option("--width", opts->width, "synthetic image width")->capture_default_str();
  cmd->add_option("--image", opts->image, "JPEG/PNG file to replicate instead of the synthetic image");
  cmd->add_option("--device", opts->device, "cpu, cuda or cuda:N (default: cuda when present)");
  cmd->add_option("--iters", opts->iters, "timed runs per pipeline")->capture_default_str();
  cmd->callback([opts] { run(*opts); });
}

}  // namespace marlin::cli
