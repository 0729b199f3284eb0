// JPEG and PNG decoding with stb_image (Debian libstb-dev; header-only, implemented here once).
#include <cstddef>
#include <cstring>
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
// stb's bit reader and IDCT shift and add ints as two's complement: on a corrupt stream its bit
// count goes negative and shifts by 32 or more, and garbage coefficients overflow; an empty PNG
// data chunk is a memcpy of 0 bytes to a null buffer. Those are wrong pixels or no-ops, not
// memory errors (ASan and UBSan's bounds checks stay on for stb), so the fuzzing build's UBSan
// does not report these classes inside stb.
#if defined(__clang__)
#pragma clang attribute push(                                                                  \
    __attribute__((no_sanitize("shift", "signed-integer-overflow", "nonnull-attribute"))),        \
    apply_to = function)
#endif
#include <stb/stb_image.h>
#if defined(__clang__)
#pragma clang attribute pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace marlin {

namespace {

// A header that decodes past this many pixels (16384 x 16384) is refused before stb allocates:
// a few hundred bytes of JPEG header could otherwise ask for gigabytes of component buffers,
// which stb zero-fills when the scan data is missing.
constexpr int64_t kMaxImagePixels = int64_t{1} << 28;

// stb_image 2.27 (Debian's, and .deps') trusts two things a JPEG may get wrong, both found by
// fuzz/image_fuzz.cpp and checked upstream since 2.28: a DHT table whose code counts sum past
// 256 is built into a 256-entry symbol array (a heap overflow), and a scan may use a Huffman
// table no DHT defined, decoding through uninitialized memory into out-of-bounds symbol reads.
// This walks the segments the way stb reaches them and names the first such problem, or returns
// null. Every other malformation is left to stb, which refuses it cleanly; where stb would stop,
// the walk may go on, so it checks a superset of what stb uses.
const char* jpeg_huffman_problem(const uint8_t* data, size_t size) {
  const auto byte = [&](size_t i) -> int { return i < size ? data[i] : 0; };  // stb reads zeros past the end
  size_t at = 0;
  while (byte(at) == 0xFF) ++at;
  if (at == 0 || byte(at) != 0xD8) return nullptr;  // no SOI: not a JPEG to stb
  ++at;
  bool defined[2][4] = {};  // [DC, AC][table id]
  bool progressive = false;
  while (at < size) {
    if (data[at] != 0xFF) {  // padding between segments (stb skips it before the frame header)
      ++at;
      continue;
    }
    while (at < size && data[at] == 0xFF) ++at;  // fill bytes
    if (at >= size) return nullptr;
    const int marker = data[at++];
    if (marker == 0xD9) return nullptr;                                  // EOI
    if (marker == 0x00 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // stb fails on these
    if (at + 2 > size) return nullptr;
    const size_t length = static_cast<size_t>(data[at]) << 8 | data[at + 1];
    if (length < 2) return nullptr;  // stb refuses every segment this short
    if (marker == 0xC2) progressive = true;
    if (marker == 0xC4) {  // DHT: tables of (class/id, 16 counts, symbols)
      size_t table = at + 2;
      ptrdiff_t left = static_cast<ptrdiff_t>(length) - 2;
      while (left > 0) {
        const int id = byte(table);
        if ((id >> 4) > 1 || (id & 15) > 3) return nullptr;  // stb refuses the header
        int codes = 0;
        for (size_t i = 1; i <= 16; ++i) codes += byte(table + i);
        if (codes > 256) return "a Huffman table with more than 256 codes";
        defined[id >> 4][id & 15] = true;
        table += 17 + static_cast<size_t>(codes);
        left -= 17 + codes;
      }
      if (left != 0) return nullptr;  // stb refuses a length that splits a table
    }
    if (marker == 0xDA) {  // SOS: components' (DC, AC) table ids, then spectral start and end
      const int components = byte(at + 2);
      const size_t tail = at + 3 + 2 * static_cast<size_t>(components);
      const int spectral_start = byte(tail), spectral_end = byte(tail + 1);
      for (int k = 0; k < components; ++k) {
        const int tables = byte(at + 4 + 2 * static_cast<size_t>(k));
        const int dc = tables >> 4, ac = tables & 15;  // stb refuses ids over 3
        if (dc <= 3 && spectral_start == 0 && !defined[0][dc]) return "a scan uses an undefined Huffman table";
        // Baseline scans always code AC coefficients (stb ignores their spectral end).
        if (ac <= 3 && (spectral_end > 0 || !progressive) && !defined[1][ac])
          return "a scan uses an undefined Huffman table";
      }
    }
    at += length;
    if (marker == 0xDA) {  // skip the entropy-coded data up to the next real marker
      while (at < size) {
        if (data[at] != 0xFF) {
          ++at;
          continue;
        }
        size_t next = at + 1;
        while (next < size && data[next] == 0xFF) ++next;
        if (next >= size) return nullptr;
        const int c = data[next];
        if (c != 0 && !(c >= 0xD0 && c <= 0xD7)) break;  // a marker other than stuffing or RSTn
        at = next + 1;
      }
    }
  }
  return nullptr;
}

// stb_image 2.27 reallocates its PNG data buffer to a chunk's declared length (up to 2 GB)
// before it knows whether the file holds that much (found by fuzz/image_fuzz.cpp). A chunk's
// data and CRC always lie inside a valid file; names a chunk that runs past the end, or null.
const char* png_chunk_problem(const uint8_t* data, size_t size) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size < 8 || std::memcmp(data, kSignature, 8) != 0) return nullptr;
  size_t at = 8;
  while (size - at >= 8) {  // chunk: length (big-endian), type, data, CRC
    const size_t length = static_cast<size_t>(data[at]) << 24 | static_cast<size_t>(data[at + 1]) << 16 |
                          static_cast<size_t>(data[at + 2]) << 8 | data[at + 3];
    if (std::memcmp(data + at + 4, "IEND", 4) == 0) return nullptr;  // stb stops before its CRC
    if (length > size - at - 8) return "a chunk runs past the end of the file";
    at += 12 + length;
    if (at > size) return nullptr;  // a cut CRC: stb reads zeros, then refuses chunk type 0
  }
  return nullptr;
}

ImageInfo checked_info(const uint8_t* data, size_t size, const std::string& name, const char* op) {
  MARLIN_CHECK(data != nullptr && size > 0, op, name, ": empty file");
  MARLIN_CHECK(size <= static_cast<size_t>(INT32_MAX), op, name, ": file of ", size,
               " bytes is too large");
  const char* jpeg_problem = jpeg_huffman_problem(data, size);
  MARLIN_CHECK(jpeg_problem == nullptr, op, name, ": corrupt JPEG (", jpeg_problem, ")");
  const char* png_problem = png_chunk_problem(data, size);
  MARLIN_CHECK(png_problem == nullptr, op, name, ": corrupt PNG (", png_problem, ")");
  int width = 0, height = 0, stored = 0;
  MARLIN_CHECK(stbi_info_from_memory(data, static_cast<int>(size), &width, &height, &stored), op,
               name, ": not a readable JPEG or PNG image (", stbi_failure_reason(), ")");
  MARLIN_CHECK(width > 0 && height > 0, op, name, ": zero-sized image ", width, "x", height);
  const ImageInfo info{width, height, stored};
  MARLIN_CHECK(info.width * info.height <= kMaxImagePixels, op, name, ": image of ", width, "x",
               height, " pixels is over the limit of ", kMaxImagePixels, " pixels");
  return info;
}

}  // namespace

ImageInfo image_info(const uint8_t* data, size_t size, const std::string& name) {
  return checked_info(data, size, name, "image_info");
}

Tensor decode_image(const uint8_t* data, size_t size, int channels, const std::string& name) {
  const char* op = "decode_image";
  MARLIN_CHECK(channels == 0 || channels == 1 || channels == 3 || channels == 4, op,
               "channels must be 0 (as stored), 1, 3 or 4, got ", channels);
  const int stored = checked_info(data, size, name, op).channels;
  const int len = static_cast<int>(size);
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
