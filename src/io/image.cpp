// JPEG and PNG decoding with stb_image (Debian libstb-dev; header-only, implemented here once).
#include <fstream>
#include <iterator>
#include <vector>

#include "marlin/image.h"

// Only the two formats we promise, and a bound on the sides so a hostile header cannot ask for
// terabytes: 2^16 x 2^16 pixels.
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS (1 << 16)
#define STB_IMAGE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace marlin {

Tensor decode_image(const uint8_t* data, size_t size, int channels, const std::string& name) {
  const char* op = "decode_image";
  MARLIN_CHECK(channels == 0 || channels == 1 || channels == 3 || channels == 4, op,
               "channels must be 0 (as stored), 1, 3 or 4, got ", channels);
  MARLIN_CHECK(data != nullptr && size > 0, op, name, ": empty file");
  MARLIN_CHECK(size <= static_cast<size_t>(INT32_MAX), op, name, ": file of ", size,
               " bytes is too large");
  const int len = static_cast<int>(size);
  int width = 0, height = 0, stored = 0;
  MARLIN_CHECK(stbi_info_from_memory(data, len, &width, &height, &stored), op, name,
               ": not a readable JPEG or PNG image (", stbi_failure_reason(), ")");
  MARLIN_CHECK(width > 0 && height > 0, op, name, ": zero-sized image ", width, "x", height);
  // Gray + alpha has no tensor layout of its own here: ask for RGBA.
  const int want = channels != 0 ? channels : (stored == 2 ? 4 : stored);
  int w = 0, h = 0, n = 0;
  stbi_uc* pixels = stbi_load_from_memory(data, len, &w, &h, &n, want);
  MARLIN_CHECK(pixels != nullptr, op, name, ": corrupt or unsupported image (",
               stbi_failure_reason(), ")");
  std::shared_ptr<void> owner(pixels, [](void* p) { stbi_image_free(p); });
  MARLIN_CHECK(w > 0 && h > 0, op, name, ": zero-sized image ", w, "x", h);
  Tensor view = Tensor::from_blob(pixels, {h, w, want}, DType::u8, Device::cpu(), owner);
  return view.clone();  // 64-byte aligned storage of our own allocator
}

Tensor load_image(const std::string& path, int channels) {
  std::ifstream file(path, std::ios::binary);
  MARLIN_CHECK(file.good(), "load_image", "cannot open ", path);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return decode_image(bytes.data(), bytes.size(), channels, path);
}

}  // namespace marlin
