// CUDA rotary position embedding, in place: one warp per (token, head), each lane computing the
// cos/sin of the pairs it rotates; optionally writing the rotated keys and the values to the KV
// cache in the same launch (rope_cache_write). Independent warps with no block barrier: a
// decode step's 40 heads run side by side in one memory latency instead of in staged rounds of
// one block.
#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/rope_items.cuh"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

using namespace rope_work;

constexpr int kWarps = 4;  // (token, head) items per block
constexpr int64_t kMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
rope_kernel(RopeJob job) {
  pdl_launch_dependents();
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh): q and k are the previous output
  extern __shared__ float stage_all[];  // interleaved only: 2 * half floats a warp
  const int warp = threadIdx.x / 32;
  run_rope_job<T>(job, static_cast<int64_t>(blockIdx.x) * kWarps + warp, static_cast<int64_t>(gridDim.x) * kWarps,
                  stage_all + static_cast<int64_t>(warp) * 2 * job.half);
}

void launch_rope(const RopeJob& job, DType dtype, int device) {
  if (job.items == 0) return;
  const size_t smem = job.interleaved ? sizeof(float) * 2 * static_cast<size_t>(job.half) * kWarps : 0;
  MARLIN_CHECK(smem <= 48 * 1024, "rope", "rotary_dim=", 2 * job.half, " needs ", smem,
               " bytes of shared memory per block, over 48 KB");
  // Capped: a long prefill's warps take several items each (and the tests reach the cap).
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((job.items + kWarps - 1) / kWarps, kMaxBlocks));
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  nn::dispatch_float(dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    MARLIN_CUDA_CHECK(launch_pdl(rope_kernel<T>, dim3(blocks), dim3(kWarps * 32), smem, stream, job), "rope");
  });
}

}  // namespace

void rope(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq,
          bool interleaved, float attention_factor) {
  launch_rope(make_rope_job(q, k, Tensor(), CacheDst{}, positions, inv_freq, interleaved, attention_factor), q.dtype(),
              q.device().index);
}

void rope_cache_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                      const Tensor& inv_freq, bool interleaved, float attention_factor, Tensor& k_cache,
                      Tensor& v_cache, const Tensor& starts, const Tensor& counts) {
  launch_rope(make_rope_job(q, k, v, cache_dst(k_cache, v_cache, starts, counts, q.size(0)), positions, inv_freq,
                            interleaved, attention_factor),
              q.dtype(), q.device().index);
}

void mla_rope_cache_write(const Tensor& q_rope, const Tensor& k_rope, const Tensor& latent, const Tensor& positions,
                          const Tensor& inv_freq, bool interleaved, float attention_factor,
                          const Tensor& norm_weight, float eps, Tensor& cache, const Tensor& starts,
                          const Tensor& counts) {
  launch_rope(make_mla_rope_job(q_rope, k_rope, latent, positions, inv_freq, interleaved, attention_factor, norm_weight,
                                eps, cache, starts, counts),
              q_rope.dtype(), q_rope.device().index);
}

}  // namespace marlin::cuda
