// Programmatic dependent launch (Hopper and later). A decode step is a chain of small kernels,
// each waiting for the one before: without help the GPU drains, then starts the next grid and
// its first loads from scratch. A kernel launched with the programmatic-serialization attribute
// may start while its predecessor still runs; it does the work that does not read the
// predecessor's output (the GEMM streams its weights, which no kernel writes) and then waits in
// pdl_wait() until the predecessor grid has finished and its writes are visible. A predecessor
// that calls pdl_launch_dependents() early lets the dependent grid start before it ends. The
// small decode kernels (norms, RoPE, cache writes, attention, SwiGLU) have no such prologue: they
// wait at their first instruction, and gain the launch latency, which the waiting grid has
// already paid when its predecessor ends (Llama-3.1-8B FP4 decode +6%, docs/PERFORMANCE.md).
// Both instructions are no-ops for a kernel launched without the attribute, and below sm_90.
// Before its wait a dependent reads only what no kernel of the step writes (or hints it checks
// after): `tools/sass_loads_before_wait.py build` lists every kernel's loads before its wait.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace marlin::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Loads of what a predecessor grid wrote, through L2, for a dependent that reads it after
// pdl_wait(). Volatile asm, so they stay after the wait: a read-only load (ld.global.nc, which
// nvcc makes of a const __restrict__ pointer) is taken to read memory that no one writes while
// the kernel runs, and nvcc moved one above the wait (SASS of the MoE down kernel: its
// activations loaded before griddepcontrol.wait, and 4 CUDA tests failed on wrong sums).
__device__ __forceinline__ uint4 ld_dependent_v4(const void* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ int ld_dependent_s32(const int* p) {
  int v;
  asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// Whether kernels on `device` are launched as programmatic dependents: compute capability 9.0
// or later, unless MARLIN_PDL=0 (to compare, or to rule it out).
bool pdl_enabled(int device);

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent when `pdl`.
template <typename... Params, typename... Args>
cudaError_t launch_maybe_pdl(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// launch_maybe_pdl on the current device (the one a <<<>>> launch would use). Every kernel
// launched this way calls pdl_wait() before its first global memory access: with the attribute
// it may start before its predecessor ends, and the wait is what orders it after it.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  return launch_maybe_pdl(pdl_enabled(device), kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace marlin::cuda
