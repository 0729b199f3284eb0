// The Qwen2-VL and ViT pipelines against Transformers / torchvision fixtures, image decoding
// against PIL, .npy round trips, and the errors for bad input.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "marlin/image.h"
#include "marlin/npy.h"
#include "marlin/vision.h"
#include "test_util.h"
#include "vision/vision_test_util.h"

namespace marlin {
namespace {

using testing::difference;
using testing::expect_error;
using testing::load_vision_npy;
using testing::stack;
using testing::to_nhwc;

// Normalized values from stored 8-bit pixels; `channel_of(i)` gives the channel of element i.
template <typename ChannelOf>
Tensor normalized(const Tensor& pixels, const std::vector<float>& mean, const std::vector<float>& std,
                  ChannelOf channel_of) {
  std::vector<float> v = pixels.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    const size_t c = channel_of(i);
    v[i] = (v[i] / 255.0f - mean[c]) / std[c];
  }
  return Tensor::from_vector(v, pixels.shape(), DType::f32);
}

// One 8-bit level after normalization, for the smallest std.
double level(const std::vector<float>& std) { return 1.0 / 255.0 / *std::min_element(std.begin(), std.end()) + 1e-5; }

void expect_qwen_matches(const vision::Qwen2VLInputs& got, const nlohmann::json& c, const std::string& what) {
  const Tensor pixels = load_vision_npy(c["pixels"]);
  const int64_t per_channel = pixels.size(1) / 3;
  const Tensor want = normalized(pixels, vision::kClipMean, vision::kClipStd,
                                 [&](size_t i) { return (i % static_cast<size_t>(pixels.size(1))) / per_channel; });
  ASSERT_EQ(shape_str(got.pixel_values.shape()), shape_str(want.shape())) << what;
  const Tensor grid = load_vision_npy(c["grid_thw"]);
  EXPECT_EQ(got.image_grid_thw.to_float_vector(), grid.to_float_vector()) << what;
  // Transformers resizes u8 images with torch's fixed-point resampler, we in float with the same
  // 8-bit rounding after each pass: values on a rounding boundary differ by a level, and where
  // both passes land on one (bicubic overshoot next to saturated pixels) by two.
  const auto d = difference(got.pixel_values, want, 1e-4);
  const auto beyond_one_level = difference(got.pixel_values, want, level(vision::kClipStd));
  EXPECT_LE(d.max, 2 * level(vision::kClipStd)) << what;
  EXPECT_LT(d.fraction, 0.01) << what;  // a wrong patch order would differ almost everywhere
  EXPECT_LT(beyond_one_level.fraction, 1e-4) << what;
  const auto head = got.pixel_values.to_float_vector();
  for (size_t i = 0; i < c["head"].size(); ++i)
    EXPECT_NEAR(head[i], c["head"][i].get<double>(), level(vision::kClipStd)) << what;
}

TEST(VisionPipelines, Qwen2VLMatchesTransformers) {
  testing::PoisonScope poison;
  int cases = 0;
  for (const auto& c : testing::vision_manifest()["qwen2vl"]) {
    vision::Qwen2VLOptions o;
    o.min_pixels = c["min_pixels"];
    o.max_pixels = c["max_pixels"];
    std::vector<Tensor> images;
    for (const auto& name : c["inputs"]) images.push_back(load_vision_npy(name));
    const std::string what = c["name"];
    expect_qwen_matches(vision::preprocess_qwen2vl(images, o), c, what + " list");
    expect_qwen_matches(vision::preprocess_qwen2vl(images.size() == 1 ? images[0] : stack(images), o), c,
                        what + " batch tensor");
    std::vector<Tensor> nhwc;
    for (const Tensor& t : images) nhwc.push_back(to_nhwc(t));
    o.nhwc = true;
    expect_qwen_matches(vision::preprocess_qwen2vl(nhwc, o), c, what + " NHWC");
    ++cases;
  }
  EXPECT_GE(cases, 8);
}

TEST(VisionPipelines, VitMatchesTorchvision) {
  testing::PoisonScope poison;
  for (const auto& c : testing::vision_manifest()["vit"]) {
    const Tensor image = load_vision_npy(c["input"]);
    const Tensor pixels = load_vision_npy(c["pixels"]);
    const int64_t plane = pixels.size(1) * pixels.size(2);
    Tensor want = normalized(pixels, vision::kImageNetMean, vision::kImageNetStd,
                             [&](size_t i) { return i / static_cast<size_t>(plane); });
    want = want.view({1, 3, pixels.size(1), pixels.size(2)});
    vision::VitOptions o;
    o.height = c["size"][0];
    o.width = c["size"][1];
    const Tensor got = vision::preprocess_for_vit(image, o);
    const auto d = difference(got, want, 1e-4);
    EXPECT_LE(d.max, level(vision::kImageNetStd)) << c.dump();
    EXPECT_LT(d.fraction, 0.02) << c.dump();
    // A list of two images gives a batch of two; NHWC input gives the same NCHW output.
    const Tensor two = vision::preprocess_for_vit(std::vector<Tensor>{image, image.clone()}, o);
    ASSERT_EQ(two.size(0), 2);
    EXPECT_EQ(two.select(0, 1).contiguous().to_float_vector(), got.select(0, 0).contiguous().to_float_vector());
    o.nhwc = true;
    EXPECT_EQ(vision::preprocess_for_vit(to_nhwc(image), o).to_float_vector(), got.to_float_vector());
  }
  // The default of the original API: 224x224, ImageNet statistics.
  EXPECT_EQ(shape_str(vision::preprocess_for_vit(load_vision_npy("in_a.npy")).shape()), "[1, 3, 224, 224]");
}

TEST(VisionPipelines, SmartResizeRules) {
  EXPECT_EQ(vision::smart_resize(42, 70), std::make_pair(int64_t{56}, int64_t{56}));  // halves to even
  EXPECT_EQ(vision::smart_resize(1080, 1920), std::make_pair(int64_t{728}, int64_t{1316}));
  EXPECT_EQ(vision::smart_resize(1080, 1920, 28, 3136, vision::kOriginalApiQwen2VLMaxPixels),
            std::make_pair(int64_t{756}, int64_t{1344}));
  expect_error([] { vision::smart_resize(28, 28 * 201); }, "aspect ratio must be at most 200");
  expect_error([] { vision::smart_resize(20, 100); }, "smaller than the factor 28");
  const Tensor strip = Tensor::from_vector(std::vector<uint8_t>(3 * 30 * 6100, 9), {3, 30, 6100}, DType::u8);
  expect_error([&] { vision::preprocess_qwen2vl(strip); }, "aspect ratio");
  const Tensor tiny = Tensor::from_vector(std::vector<uint8_t>(3 * 27 * 60, 9), {3, 27, 60}, DType::u8);
  expect_error([&] { vision::preprocess_qwen2vl(tiny); }, "smaller than the factor");
  expect_error([&] { vision::preprocess_qwen2vl(std::vector<Tensor>{}); }, "no images");
}

TEST(VisionFiles, DecodeMatchesPil) {
  for (const auto& c : testing::vision_manifest()["files"]) {
    const Tensor want = load_vision_npy(c["decoded"]);
    const Tensor got = load_image(testing::vision_fixture(c["file"]));
    ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << c["file"];
    const auto d = difference(got, want, 0.5);
    if (c["exact"]) {
      EXPECT_EQ(d.max, 0.0) << c["file"];
    } else {  // stb_image and libjpeg differ in IDCT and chroma upsampling by a few levels
      EXPECT_LE(d.max, 8.0) << c["file"];
      EXPECT_LT(d.fraction, 0.6) << c["file"];
    }
  }
  EXPECT_EQ(shape_str(load_image(testing::vision_fixture("rgba.png"), 3).shape()), "[45, 67, 3]");
  EXPECT_EQ(shape_str(load_image(testing::vision_fixture("photo.jpg"), 1).shape()), "[97, 131, 1]");
}

TEST(VisionFiles, PipelineOnDecodedPng) {
  for (const auto& c : testing::vision_manifest()["qwen2vl"])
    if (c["name"] == "file_png")
      expect_qwen_matches(vision::preprocess_qwen2vl(load_image(testing::vision_fixture("photo.png")),
                                                     {.nhwc = true}),
                          c, "file_png");
}

TEST(VisionFiles, BadFilesAreErrors) {
  const auto dir = std::filesystem::temp_directory_path() / ("marlin_vision_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return (dir / name).string();
  };
  std::ifstream jpg(testing::vision_fixture("photo.jpg"), std::ios::binary);
  const std::string jpeg_bytes((std::istreambuf_iterator<char>(jpg)), std::istreambuf_iterator<char>());
  std::ifstream png(testing::vision_fixture("photo.png"), std::ios::binary);
  const std::string png_bytes((std::istreambuf_iterator<char>(png)), std::istreambuf_iterator<char>());
  expect_error([&] { load_image(write("empty.png", "")); }, "empty file");
  expect_error([&] { load_image(write("noise.jpg", "this is not an image at all")); }, "not a readable JPEG or PNG");
  expect_error([&] { load_image(write("cut.jpg", jpeg_bytes.substr(0, 200))); }, "cut.jpg");
  expect_error([&] { load_image(write("cut.png", png_bytes.substr(0, png_bytes.size() / 2))); }, "corrupt");
  std::string zero_png = png_bytes;  // IHDR width field (bytes 16..19) set to 0
  zero_png[16] = zero_png[17] = zero_png[18] = zero_png[19] = 0;
  expect_error([&] { load_image(write("zero.png", zero_png)); }, "zero.png");
  expect_error([&] { load_image((dir / "missing.png").string()); }, "cannot open");
  expect_error([&] { load_image(testing::vision_fixture("photo.png"), 2); }, "channels must be");
  std::filesystem::remove_all(dir);
}

TEST(VisionFiles, HostileHeadersAreErrors) {
  std::ifstream jpg(testing::vision_fixture("photo.jpg"), std::ios::binary);
  std::string jpeg((std::istreambuf_iterator<char>(jpg)), std::istreambuf_iterator<char>());
  std::ifstream png(testing::vision_fixture("photo.png"), std::ios::binary);
  std::string png_bytes((std::istreambuf_iterator<char>(png)), std::istreambuf_iterator<char>());
  const auto decode = [](const std::string& bytes) {
    return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  };
  const auto info = [](const std::string& bytes) {
    return image_info(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  };
  const Tensor photo = decode(png_bytes);
  const ImageInfo header = info(png_bytes);
  EXPECT_EQ(header.height, photo.size(0));
  EXPECT_EQ(header.width, photo.size(1));
  EXPECT_EQ(header.channels, photo.size(2));
  // A Huffman table declaring 16 x 255 codes: stb_image 2.27 would write past its 256 symbols.
  const size_t dht = jpeg.find("\xFF\xC4");
  ASSERT_NE(dht, std::string::npos);
  for (size_t i = dht + 5; i < dht + 21; ++i) jpeg[i] = '\xFF';
  expect_error([&] { decode(jpeg); }, "Huffman table");
  // An IDAT claiming 2 GB: stb_image 2.27 would allocate it before reading.
  std::string long_chunk = png_bytes;
  const size_t idat = long_chunk.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  long_chunk[idat - 4] = '\x7F', long_chunk[idat - 3] = '\xFF';
  expect_error([&] { decode(long_chunk); }, "chunk runs past the end");
  // 18000 x 18000 RGB in the IHDR (stb skips CRCs; its own limit is 2^30 bytes): refused before
  // any pixel buffer is allocated.
  for (size_t at : {size_t{16}, size_t{20}}) {
    png_bytes[at] = 0, png_bytes[at + 1] = 0, png_bytes[at + 2] = '\x46', png_bytes[at + 3] = '\x50';
  }
  expect_error([&] { decode(png_bytes); }, "over the limit");
  expect_error([&] { info(png_bytes); }, "image_info");
}

TEST(VisionFiles, NpyRoundTrip) {
  const auto path = (std::filesystem::temp_directory_path() / ("marlin_npy_" + std::to_string(::getpid()) + ".npy")).string();
  const Tensor f = testing::random_tensor({3, 5, 7}, DType::f32, 11);
  save_npy(path, f);
  const Tensor back = load_npy(path);
  EXPECT_EQ(back.dtype(), DType::f32);
  EXPECT_EQ(shape_str(back.shape()), "[3, 5, 7]");
  EXPECT_EQ(back.to_float_vector(), f.to_float_vector());
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, -2, 300000000000}, {3}, DType::i64);
  save_npy(path, ids);
  EXPECT_EQ(load_npy(path).to_float_vector(), ids.to_float_vector());
  std::ofstream(path, std::ios::binary) << "\x93NUMPY\x01\x00garbage";
  expect_error([&] { load_npy(path); }, path);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace marlin
