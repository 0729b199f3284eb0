// CPU random fill from the counter-based generator (the reference of kernels/cuda/random.cu).
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/random_hash.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {

void random_normal(Tensor& out, uint64_t seed, float stddev) {
  const DType t = out.dtype();
  void* p = out.data_ptr();
  parallel_for(0, out.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float v = stddev * random::normal(seed, static_cast<uint64_t>(i));
      if (t == DType::f32) static_cast<float*>(p)[i] = v;
      else if (t == DType::f16) static_cast<uint16_t*>(p)[i] = float_to_half_bits(v);
      else static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
    }
  });
}

}  // namespace marlin::cpu
