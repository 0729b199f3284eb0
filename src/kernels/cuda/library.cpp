// KernelLibrary over the CUDA driver API: built-in kernels by their host symbols, run-time
// libraries compiled by NVRTC to PTX (no GPU needed) and loaded lazily into a module.
#include "marlin/kernel_library.h"

#include <cuda.h>
#include <nvrtc.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>

#include "core/cuda_check.h"
#include "kernels/cuda/builtin_kernels.h"

namespace marlin {

// The driver API is reached through the runtime's entry points rather than by linking
// libcuda, so the library loads (and compiles kernels) on machines without a GPU driver.
struct DriverApi {
  decltype(&cuModuleLoadData) module_load_data;
  decltype(&cuModuleUnload) module_unload;
  decltype(&cuModuleGetFunction) module_get_function;
  decltype(&cuLaunchKernel) launch_kernel;
  decltype(&cuStreamSynchronize) stream_synchronize;
  decltype(&cuGetErrorString) get_error_string;
};

template <typename F>
static F driver_entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status{};
  MARLIN_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &status),
                    "KernelLibrary");
  MARLIN_CHECK(status == cudaDriverEntryPointSuccess && fn, "KernelLibrary",
               "the CUDA driver does not provide ", name);
  return reinterpret_cast<F>(fn);
}

static const DriverApi& driver() {
  static const DriverApi api{
      driver_entry<decltype(&cuModuleLoadData)>("cuModuleLoadData"),
      driver_entry<decltype(&cuModuleUnload)>("cuModuleUnload"),
      driver_entry<decltype(&cuModuleGetFunction)>("cuModuleGetFunction"),
      driver_entry<decltype(&cuLaunchKernel)>("cuLaunchKernel"),
      driver_entry<decltype(&cuStreamSynchronize)>("cuStreamSynchronize"),
      driver_entry<decltype(&cuGetErrorString)>("cuGetErrorString"),
  };
  return api;
}

#define MARLIN_CU_CHECK(expr, op)                                                   \
  do {                                                                              \
    CUresult marlin_res_ = (expr);                                                  \
    if (marlin_res_ != CUDA_SUCCESS) {                                              \
      const char* marlin_msg_ = nullptr;                                            \
      driver().get_error_string(marlin_res_, &marlin_msg_);                         \
      ::marlin::fail(op, #expr, " failed: ", marlin_msg_ ? marlin_msg_ : "unknown"); \
    }                                                                               \
  } while (0)

struct KernelLibrary::RuntimeLibrary {
  std::string ptx;
  std::vector<std::string> functions;
  CUmodule module = nullptr;
};

namespace {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(none)" : out;
}

std::vector<std::string> ptx_entries(const std::string& ptx) {
  static const std::regex entry(R"(\.entry\s+([A-Za-z_$][A-Za-z0-9_$]*))");
  std::vector<std::string> names;
  for (auto it = std::sregex_iterator(ptx.begin(), ptx.end(), entry); it != std::sregex_iterator(); ++it)
    names.push_back((*it)[1]);
  return names;
}

int device_arch(Device device) {
  if (device.is_cuda() && cuda_available()) {
    int major = 0, minor = 0;
    MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index), "KernelLibrary");
    MARLIN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index), "KernelLibrary");
    return major * 10 + minor;
  }
  return 90;  // no GPU here: produce PTX for Hopper
}

}  // namespace

Device KernelLibrary::default_device() { return cuda_available() ? Device::cuda(0) : Device::cpu(); }

KernelLibrary::KernelLibrary(Device device) : device_(device) {
  if (device_.is_cuda()) {
    MARLIN_CHECK(device_.index < cuda_device_count(), "KernelLibrary", "device ", device_.str(),
                 " is not available (", cuda_device_count(), " CUDA devices present)");
    stream_ = current_stream(device_.index);
  }
}

KernelLibrary::~KernelLibrary() {
  for (auto& [name, lib] : libraries_)
    if (lib->module) driver().module_unload(lib->module);
}

std::unique_ptr<KernelLibrary> KernelLibrary::from_source_dir(const std::filesystem::path& dir,
                                                              Device device) {
  constexpr const char* op = "KernelLibrary::from_source_dir";
  MARLIN_CHECK(std::filesystem::is_directory(dir), op, "'", dir.string(), "' is not a directory");
  auto lib = std::make_unique<KernelLibrary>(device);
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".cu") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f);
    std::stringstream ss;
    ss << in.rdbuf();
    lib->compile_source(f.stem().string(), ss.str());
  }
  return lib;
}

void KernelLibrary::compile_source(const std::string& name, const std::string& source) {
  constexpr const char* op = "KernelLibrary::compile_source";
  MARLIN_CHECK(!name.empty() && name != builtin_library, op, "library name '", name,
               "' is empty or reserved");
  nvrtcProgram prog = nullptr;
  MARLIN_CHECK(nvrtcCreateProgram(&prog, source.c_str(), (name + ".cu").c_str(), 0, nullptr, nullptr) ==
                   NVRTC_SUCCESS,
               op, "nvrtcCreateProgram failed for '", name, "'");
  const std::string arch = "--gpu-architecture=compute_" + std::to_string(device_arch(device_));
  const std::string include = std::string("--include-path=") + MARLIN_CUDA_INCLUDE_DIR;
  const char* options[] = {arch.c_str(), include.c_str(), "--std=c++17"};
  const nvrtcResult res = nvrtcCompileProgram(prog, 3, options);
  size_t log_size = 0;
  nvrtcGetProgramLogSize(prog, &log_size);
  std::string log(log_size, '\0');
  if (log_size > 1) nvrtcGetProgramLog(prog, log.data());
  if (res != NVRTC_SUCCESS) {
    nvrtcDestroyProgram(&prog);
    fail(op, "compiling '", name, "' failed: ", nvrtcGetErrorString(res), "\n", log);
  }
  size_t ptx_size = 0;
  nvrtcGetPTXSize(prog, &ptx_size);
  auto lib = std::make_unique<RuntimeLibrary>();
  lib->ptx.resize(ptx_size);
  nvrtcGetPTX(prog, lib->ptx.data());
  nvrtcDestroyProgram(&prog);
  while (!lib->ptx.empty() && lib->ptx.back() == '\0') lib->ptx.pop_back();
  lib->functions = ptx_entries(lib->ptx);
  auto old = libraries_.find(name);
  if (old != libraries_.end() && old->second->module) driver().module_unload(old->second->module);
  libraries_[name] = std::move(lib);
}

std::vector<std::string> KernelLibrary::list_libraries() const {
  std::vector<std::string> names{builtin_library};
  for (const auto& [name, lib] : libraries_) names.push_back(name);
  return names;
}

std::vector<std::string> KernelLibrary::list_functions(const std::string& library_name) const {
  if (library_name == builtin_library) {
    std::vector<std::string> names;
    for (const auto& k : cuda::builtin_kernels()) names.push_back(k.name);
    return names;
  }
  auto it = libraries_.find(library_name);
  MARLIN_CHECK(it != libraries_.end(), "KernelLibrary::list_functions", "no library '",
               library_name, "'; libraries: ", join(list_libraries()));
  return it->second->functions;
}

const std::string& KernelLibrary::ptx(const std::string& library_name) const {
  static const std::string empty;
  if (library_name == builtin_library) return empty;
  auto it = libraries_.find(library_name);
  MARLIN_CHECK(it != libraries_.end(), "KernelLibrary::ptx", "no library '", library_name,
               "'; libraries: ", join(list_libraries()));
  return it->second->ptx;
}

KernelFunction KernelLibrary::get_function(const std::string& function_name,
                                           const std::string& library_name) {
  constexpr const char* op = "KernelLibrary::get_function";
  auto missing = [&]() {
    std::string known;
    for (const auto& lib : list_libraries())
      if (library_name.empty() || lib == library_name)
        known += "\n  " + lib + ": " + join(list_functions(lib));
    fail(op, "no kernel '", function_name, "'",
         library_name.empty() ? std::string() : " in library '" + library_name + "'",
         "; known kernels:", known);
  };
  if (!library_name.empty() && library_name != builtin_library && !libraries_.count(library_name))
    fail(op, "no library '", library_name, "'; libraries: ", join(list_libraries()));
  // Find which library holds the name before touching the GPU, so unknown names are reported
  // the same way with or without one.
  std::string found;
  if (library_name.empty() || library_name == builtin_library) {
    for (const auto& k : cuda::builtin_kernels())
      if (k.name == function_name) found = builtin_library;
  }
  if (found.empty()) {
    for (const auto& [name, lib] : libraries_) {
      if (!library_name.empty() && name != library_name) continue;
      if (std::find(lib->functions.begin(), lib->functions.end(), function_name) != lib->functions.end()) {
        found = name;
        break;
      }
    }
  }
  if (found.empty()) missing();
  MARLIN_CHECK(device_.is_cuda(), op, "kernel '", function_name, "' needs a CUDA device; this library is on ",
               device_.str());
  MARLIN_CUDA_CHECK(cudaSetDevice(device_.index), op);
  MARLIN_CUDA_CHECK(cudaFree(nullptr), op);  // makes the primary context current
  if (found == builtin_library) {
    for (const auto& k : cuda::builtin_kernels()) {
      if (k.name != function_name) continue;
      cudaFunction_t f = nullptr;
      MARLIN_CUDA_CHECK(cudaGetFuncBySymbol(&f, k.symbol), op);
      return KernelFunction{reinterpret_cast<void*>(f), function_name, builtin_library};
    }
  }
  RuntimeLibrary& lib = *libraries_.at(found);
  if (!lib.module) MARLIN_CU_CHECK(driver().module_load_data(&lib.module, lib.ptx.c_str()), op);
  CUfunction f = nullptr;
  MARLIN_CU_CHECK(driver().module_get_function(&f, lib.module, function_name.c_str()), op);
  return KernelFunction{reinterpret_cast<void*>(f), function_name, found};
}

KernelLibrary& default_library() {
  static KernelLibrary lib;
  return lib;
}

void dispatch_kernel(KernelLibrary& lib, const std::string& function_name,
                     std::array<unsigned, 3> grid, std::array<unsigned, 3> block,
                     const std::vector<KernelArg>& args, bool wait, unsigned shared_bytes) {
  constexpr const char* op = "dispatch_kernel";
  for (unsigned d : grid) MARLIN_CHECK(d > 0, op, "grid dimensions must be positive, got [", grid[0], ", ", grid[1], ", ", grid[2], "]");
  for (unsigned d : block) MARLIN_CHECK(d > 0, op, "block dimensions must be positive, got [", block[0], ", ", block[1], ", ", block[2], "]");
  // Values live in `storage`; cuLaunchKernel takes a pointer to each.
  std::vector<std::array<unsigned char, 8>> storage(args.size());
  std::vector<void*> params(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    auto* slot = storage[i].data();
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, Tensor>) {
            MARLIN_CHECK(v.defined() && v.device() == lib.device(), op, "argument ", i, " (",
                         v.defined() ? v.describe() : "undefined tensor",
                         ") is not on the library's device ", lib.device().str());
            void* p = v.data_ptr();
            std::memcpy(slot, &p, sizeof(p));
          } else {
            std::memcpy(slot, &v, sizeof(v));
          }
        },
        args[i]);
    params[i] = slot;
  }
  const KernelFunction f = lib.get_function(function_name);
  auto stream = static_cast<CUstream>(lib.stream().handle);
  MARLIN_CU_CHECK(driver().launch_kernel(static_cast<CUfunction>(f.handle), grid[0], grid[1], grid[2],
                                 block[0], block[1], block[2], shared_bytes, stream,
                                 params.data(), nullptr),
                  op);
  if (wait) MARLIN_CU_CHECK(driver().stream_synchronize(stream), op);
}

}  // namespace marlin
