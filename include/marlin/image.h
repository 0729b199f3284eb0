// Image files: JPEG and PNG decoded (stb_image) to u8 [H, W, C] tensors on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "marlin/tensor.h"

namespace marlin {

// channels = 0 keeps the file's channels (1 gray, 3 RGB, 4 RGBA; gray + alpha becomes RGBA);
// 1, 3 or 4 converts (stb's rules: gray is repeated, alpha dropped, RGB to luma). `name` only
// labels errors. Errors (marlin::Error) for empty or corrupt data, formats other than JPEG and
// PNG, and zero-sized or oversized images.
Tensor decode_image(const uint8_t* data, size_t size, int channels = 0,
                    const std::string& name = "<memory>");
Tensor load_image(const std::string& path, int channels = 0);

// What the header says, without decoding the pixels: sides and the channels as stored (1 gray,
// 2 gray + alpha, 3 RGB, 4 RGBA). Errors as decode_image for data that is not a readable JPEG or
// PNG header, declares a zero side or more than 2^28 pixels, or has a structural fault that the
// decoder would trip on (decode_image checks the same before decoding).
struct ImageInfo {
  int64_t width = 0, height = 0;
  int channels = 0;
};
ImageInfo image_info(const uint8_t* data, size_t size, const std::string& name = "<memory>");

}  // namespace marlin
