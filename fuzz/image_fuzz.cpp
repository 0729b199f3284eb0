// libFuzzer target for the image decoder (JPEG and PNG through stb_image): any input either fails
// with marlin::Error or yields a u8 [H, W, C] tensor with the requested channels whose every
// byte lies inside its buffer. The first byte picks the requested channel count, so the
// conversion paths (gray <-> RGB, alpha added or dropped) are fuzzed along with the parsers;
// the seeds in tests/fixtures/fuzz/image/ start with that byte.
#include <cstdint>
#include <cstdlib>

#include "marlin/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace marlin;
  if (size == 0) return 0;
  constexpr int kChannels[4] = {0, 1, 3, 4};
  const int channels = kChannels[data[0] & 3];
  ++data;
  --size;
  // Headers may claim up to 2^16 x 2^16 pixels, which stb decodes (zero-filling what the file
  // lacks) at a cost the fuzzer reports as a timeout or an out-of-memory. image_info reads the
  // header only; a few megapixels cover every path of the parsers.
  try {
    const ImageInfo info = image_info(data, size);
    if (info.width * info.height > (int64_t{1} << 22)) return 0;
  } catch (const Error&) {
    // Not even a header: decode_image must refuse it the same way.
  }
  Tensor image;
  try {
    image = decode_image(data, size, channels, "fuzz");
  } catch (const Error&) {
    return 0;  // refused cleanly
  }
  if (image.dtype() != DType::u8 || image.dim() != 3 || image.size(0) <= 0 || image.size(1) <= 0)
    std::abort();
  const int64_t c = image.size(2);
  if (channels != 0 ? c != channels : (c != 1 && c != 3 && c != 4)) std::abort();
  const auto* bytes = image.data<uint8_t>();
  volatile uint8_t sink = 0;
  for (int64_t i = 0; i < image.numel(); ++i) sink = sink + bytes[i];  // ASan: inside the buffer
  return 0;
}
