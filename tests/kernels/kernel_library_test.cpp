// KernelLibrary: NVRTC compilation needs no GPU, so names, errors and logs are checked here;
// launching is checked in the GPU test binary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "marlin/kernel_library.h"

namespace marlin {
namespace {

const char* kScaleSource = R"(
extern "C" __global__ void scale_f32(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
extern "C" __global__ void add_one(int* x) { x[threadIdx.x] += 1; }
)";

TEST(KernelLibrary, CompilesSourceAndListsFunctions) {
  if (!cuda_compiled()) GTEST_SKIP() << "built without CUDA";
  KernelLibrary lib(Device::cpu());
  lib.compile_source("mine", kScaleSource);
  auto names = lib.list_functions("mine");
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"add_one", "scale_f32"}));
  EXPECT_NE(lib.ptx("mine").find(".entry scale_f32"), std::string::npos);
  const auto libs = lib.list_libraries();
  EXPECT_NE(std::find(libs.begin(), libs.end(), "mine"), libs.end());
  EXPECT_FALSE(lib.list_functions(KernelLibrary::builtin_library).empty());
}

TEST(KernelLibrary, CompileErrorCarriesTheNvrtcLog) {
  if (!cuda_compiled()) GTEST_SKIP() << "built without CUDA";
  KernelLibrary lib(Device::cpu());
  try {
    lib.compile_source("broken", "extern \"C\" __global__ void k() { undefined_thing(); }");
    FAIL() << "expected a compile error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("broken"), std::string::npos) << msg;
    EXPECT_NE(msg.find("undefined_thing"), std::string::npos) << msg;  // from the log
  }
}

TEST(KernelLibrary, UnknownNamesListWhatExists) {
  if (!cuda_compiled()) GTEST_SKIP() << "built without CUDA";
  KernelLibrary lib(Device::cpu());
  lib.compile_source("mine", kScaleSource);
  try {
    lib.get_function("scale_f64");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("scale_f64"), std::string::npos) << msg;
    EXPECT_NE(msg.find("scale_f32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gemm_fp4_m1_f16"), std::string::npos) << msg;
  }
  EXPECT_THROW(lib.list_functions("nope"), Error);
  EXPECT_THROW(lib.get_function("scale_f32", "nope"), Error);
  // Known name, but no GPU to load it on.
  if (!cuda_available()) {
    EXPECT_THROW(lib.get_function("scale_f32", "mine"), Error);
  }
}

TEST(KernelLibrary, FromSourceDirCompilesEveryFile) {
  if (!cuda_compiled()) GTEST_SKIP() << "built without CUDA";
  const auto dir = std::filesystem::temp_directory_path() / "marlin_kernel_dir_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "alpha.cu") << kScaleSource;
  std::ofstream(dir / "beta.cu") << "extern \"C\" __global__ void beta_kernel(float* x) { x[0] = 1; }";
  std::ofstream(dir / "notes.txt") << "not a kernel";
  auto lib = KernelLibrary::from_source_dir(dir, Device::cpu());
  EXPECT_EQ(lib->list_functions("beta"), std::vector<std::string>{"beta_kernel"});
  EXPECT_EQ(lib->list_functions("alpha").size(), 2u);
  EXPECT_THROW(lib->list_functions("notes"), Error);
  EXPECT_THROW(KernelLibrary::from_source_dir(dir / "missing", Device::cpu()), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace marlin
