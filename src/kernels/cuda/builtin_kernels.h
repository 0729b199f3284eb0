// The kernels compiled into the library, by name, for KernelLibrary::get_function.
#pragma once

#include <string>
#include <vector>

namespace marlin::cuda {

struct BuiltinKernel {
  std::string name;
  const void* symbol;  // the __global__ function's host stub
};

const std::vector<BuiltinKernel>& builtin_kernels();
// Each op family's .cu file appends its kernels.
void append_quant_kernels(std::vector<BuiltinKernel>& out);
void append_gemm_kernels(std::vector<BuiltinKernel>& out);
void append_gemm_mma_kernels(std::vector<BuiltinKernel>& out);
void append_gemm_stream_kernels(std::vector<BuiltinKernel>& out);
void append_gemm_batch_kernels(std::vector<BuiltinKernel>& out);

}  // namespace marlin::cuda
