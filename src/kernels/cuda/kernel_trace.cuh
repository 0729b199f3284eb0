// A diagnostic build (cmake -DMARLIN_KERNEL_TRACE=ON): thread 0 of every block of the decode
// kernels (quantized GEMM, attention, norm, SwiGLU, MLA, MoE) records its grid, SM and three
// %globaltimer stamps (start, the end of its wait for the previous kernel, end), and up to two
// TRACE_MARK stamps inside the kernel, into a ring of its own
// translation unit; dump_kernel_trace() (marlin bench generate calls it) writes the newest out
// for tools/kernel_timeline.py. It shows what ncu cannot: where a CUDA-graph decode step's
// launches overlap, wait and trail (docs/PERFORMANCE.md, twelfth session). In the normal build
// the TRACE_* macros are empty.
#pragma once
#ifdef MARLIN_KERNEL_TRACE
#include <cuda_runtime.h>

#include <vector>

namespace marlin::cuda::trace {

enum Kind : unsigned {
  gemm = 1, attention = 2, norm = 3, silu = 4, gemm16 = 5, merge = 7,
  mla = 8, head_matmul = 9, router = 10, moe_up = 11, moe_down = 12, skinny = 13
};

struct Record {  // 48 bytes, the file's record (tools/kernel_timeline.py reads the same layout)
  unsigned long long grid, start, waited, end;
  unsigned kind, sm, block, marks;  // marks: TRACE_MARK stamps, 16 bits each, 8 ns units after the wait
};

constexpr unsigned long long kRing = 1ull << 18;
using Reader = void (*)(std::vector<Record>&);
bool register_reader(Reader reader);  // kernel_trace.cu

// `static`: every translation unit that includes this has its own ring (no relocatable device
// code needed), and registers a reader for it.
static __device__ Record g_ring[kRing];
static __device__ unsigned long long g_written;

__device__ __forceinline__ unsigned long long now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Two optional stamps inside a kernel (TRACE_MARK(1), TRACE_MARK(2)) packed into one word.
__device__ __forceinline__ unsigned pack_marks(unsigned long long waited, unsigned long long m1,
                                               unsigned long long m2) {
  auto field = [&](unsigned long long m) {
    return m <= waited ? 0u : static_cast<unsigned>(min((m - waited) / 8, 0xffffull));
  };
  return field(m1) | field(m2) << 16;
}

__device__ __forceinline__ void record(unsigned kind, unsigned long long start, unsigned long long waited,
                                       unsigned long long m1 = 0, unsigned long long m2 = 0) {
  if (threadIdx.x != 0) return;
  const unsigned long long end = now();
  unsigned long long grid;
  unsigned sm;
  asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  const unsigned long long slot = atomicAdd(&g_written, 1ull) % kRing;
  g_ring[slot] = Record{grid, start, waited, end, kind, sm, blockIdx.x + 65536u * blockIdx.y,
                        pack_marks(waited, m1, m2)};
}

static void read_ring(std::vector<Record>& out) {
  unsigned long long written = 0;
  std::vector<Record> ring(kRing);
  if (cudaMemcpyFromSymbol(&written, g_written, sizeof written) != cudaSuccess ||
      cudaMemcpyFromSymbol(ring.data(), g_ring, sizeof(Record) * kRing) != cudaSuccess)
    return;
  ring.resize(written < kRing ? written : kRing);
  out.insert(out.end(), ring.begin(), ring.end());
}
static const bool g_reader_registered = register_reader(&read_ring);

}  // namespace marlin::cuda::trace

#define TRACE_START                                                      \
  const unsigned long long trace_start = ::marlin::cuda::trace::now(); \
  unsigned long long trace_mark1 = 0, trace_mark2 = 0;                 \
  (void)trace_mark1;                                                   \
  (void)trace_mark2;
#define TRACE_WAITED const unsigned long long trace_waited = ::marlin::cuda::trace::now();
#define TRACE_MARK(n) trace_mark##n = ::marlin::cuda::trace::now();
#define TRACE_END(kind) \
  ::marlin::cuda::trace::record(::marlin::cuda::trace::kind, trace_start, trace_waited, trace_mark1, trace_mark2);
#else
#define TRACE_START
#define TRACE_WAITED
#define TRACE_MARK(n)
#define TRACE_END(kind)
#endif
