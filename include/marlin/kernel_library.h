// KernelLibrary (the original MetalKernelLibrary): the built-in CUDA kernels, compiled at build
// time, plus libraries compiled at run time from CUDA C++ source with NVRTC. Compiling needs no
// GPU; getting and launching a function does.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "marlin/device.h"
#include "marlin/stream.h"
#include "marlin/tensor.h"

namespace marlin {

// An opaque CUfunction handle.
struct KernelFunction {
  void* handle = nullptr;
  std::string name;
  std::string library;
};

class KernelLibrary {
 public:
  // The library of built-in kernels on `device` (CUDA device 0 when present, else the CPU).
  explicit KernelLibrary(Device device = default_device());
  ~KernelLibrary();
  KernelLibrary(const KernelLibrary&) = delete;
  KernelLibrary& operator=(const KernelLibrary&) = delete;

  static constexpr const char* builtin_library = "builtin";
  static Device default_device();

  // Compiles every *.cu file of `dir` into a library named after the file's stem.
  static std::unique_ptr<KernelLibrary> from_source_dir(const std::filesystem::path& dir,
                                                        Device device = default_device());

  // Compiles CUDA C++ source with NVRTC for this device's architecture (sm_90 without a GPU)
  // into the library `name`, replacing one of the same name. Kernels should be extern "C" so
  // that their names are the plain function names. A compile error throws marlin::Error
  // carrying NVRTC's log.
  void compile_source(const std::string& name, const std::string& source);

  // The function `function_name` of `library_name` (or of any library when empty). Unknown
  // names throw an error listing what exists. Needs a CUDA device.
  KernelFunction get_function(const std::string& function_name,
                              const std::string& library_name = "");
  // Kernel names of one library; unknown libraries are an error listing the known ones.
  std::vector<std::string> list_functions(const std::string& library_name) const;
  std::vector<std::string> list_libraries() const;
  // PTX produced for a run-time library (empty for the built-in one).
  const std::string& ptx(const std::string& library_name) const;

  Device device() const { return device_; }
  Stream stream() const { return stream_; }
  void set_stream(const Stream& stream) { stream_ = stream; }

 private:
  struct RuntimeLibrary;
  Device device_;
  Stream stream_;
  std::map<std::string, std::unique_ptr<RuntimeLibrary>> libraries_;
};

// The process-wide default library (the original get_default_library()).
KernelLibrary& default_library();
inline KernelLibrary& get_default_library() { return default_library(); }

// One kernel argument: a tensor passes its device pointer; scalars pass by value.
using KernelArg = std::variant<Tensor, int32_t, uint32_t, int64_t, float, double, void*>;

// Launches `function_name` with grid (blocks) and block (threads), on the library's stream;
// waits for completion when `wait` (and reports the kernel's errors then).
void dispatch_kernel(KernelLibrary& lib, const std::string& function_name,
                     std::array<unsigned, 3> grid, std::array<unsigned, 3> block,
                     const std::vector<KernelArg>& args, bool wait = true,
                     unsigned shared_bytes = 0);

}  // namespace marlin
