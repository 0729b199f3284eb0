// KernelLibrary in a build without the CUDA backend: it lives on the CPU and every operation
// that needs CUDA says so.
#ifndef MARLIN_WITH_CUDA
#include "core/cuda_check.h"
#include "marlin/kernel_library.h"

namespace marlin {

struct KernelLibrary::RuntimeLibrary {};

Device KernelLibrary::default_device() { return Device::cpu(); }
KernelLibrary::KernelLibrary(Device device) : device_(device) {
  MARLIN_CHECK(device.is_cpu(), "KernelLibrary", "device ", device.str(),
               " needs the CUDA backend, which this build does not have");
}
KernelLibrary::~KernelLibrary() = default;

std::unique_ptr<KernelLibrary> KernelLibrary::from_source_dir(const std::filesystem::path&, Device) {
  fail_no_cuda("KernelLibrary::from_source_dir");
}
void KernelLibrary::compile_source(const std::string&, const std::string&) {
  fail_no_cuda("KernelLibrary::compile_source");
}
KernelFunction KernelLibrary::get_function(const std::string&, const std::string&) {
  fail_no_cuda("KernelLibrary::get_function");
}
std::vector<std::string> KernelLibrary::list_functions(const std::string& library_name) const {
  MARLIN_CHECK(library_name == builtin_library, "KernelLibrary::list_functions", "no library '",
               library_name, "'; libraries: builtin");
  return {};
}
std::vector<std::string> KernelLibrary::list_libraries() const { return {builtin_library}; }
const std::string& KernelLibrary::ptx(const std::string&) const {
  fail_no_cuda("KernelLibrary::ptx");
}

KernelLibrary& default_library() {
  static KernelLibrary lib;
  return lib;
}

void dispatch_kernel(KernelLibrary&, const std::string&, std::array<unsigned, 3>,
                     std::array<unsigned, 3>, const std::vector<KernelArg>&, bool, unsigned) {
  fail_no_cuda("dispatch_kernel");
}

}  // namespace marlin
#endif
