// The host side of kernel_trace.cuh (a MARLIN_KERNEL_TRACE build only).
#ifdef MARLIN_KERNEL_TRACE
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/kernel_trace.cuh"

namespace marlin::cuda {
namespace trace {

static std::vector<Reader>& readers() {
  static std::vector<Reader> all;
  return all;
}
bool register_reader(Reader reader) {
  readers().push_back(reader);
  return true;
}

}  // namespace trace

// Writes the records of the last 6 ms (a few decode steps) to $MARLIN_TRACE_FILE (trace.bin).
void dump_kernel_trace() {
  std::vector<trace::Record> all;
  for (trace::Reader reader : trace::readers()) reader(all);
  unsigned long long newest = 0;
  for (const trace::Record& r : all) newest = std::max(newest, r.start);
  const char* path = std::getenv("MARLIN_TRACE_FILE");
  if (!path) path = "trace.bin";
  FILE* f = std::fopen(path, "wb");
  if (!f) {
    std::fprintf(stderr, "kernel trace: cannot write %s\n", path);
    return;
  }
  size_t kept = 0;
  for (const trace::Record& r : all)
    if (r.start + 6000000ull >= newest) kept += std::fwrite(&r, sizeof r, 1, f);
  std::fclose(f);
  std::printf("kernel trace: %zu block records written to %s\n", kept, path);
}

}  // namespace marlin::cuda
#endif
