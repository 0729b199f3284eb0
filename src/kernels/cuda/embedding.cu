// CUDA embedding lookup: one block per token copies its table row (16-byte vectors where rows
// allow, over several blocks so a decode step's one row is not one SM's copy); an id outside the
// table gives a NaN row and records the first such position for the op's error.
#include <cmath>

#include "core/cuda_check.h"
#include "kernels/cuda/nn_common.cuh"
#include "kernels/cuda/nn_kernels_cuda.h"
#include "marlin/stream.h"

namespace marlin::cuda {
namespace {

template <typename T>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                 T* __restrict__ out, int64_t vocab, int64_t hidden,
                                 unsigned long long* first_bad) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  T* o = out + t * hidden;
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0 && first_bad) atomicMin(first_bad, static_cast<unsigned long long>(t));
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) o[j] = from_float<T>(NAN);
    return;
  }
  const T* row = table + id * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) o[j] = row[j];
}

// Rows of whole 16-byte vectors: blocks along x split the row, y walks the tokens.
template <typename T>
__global__ void embedding_vector_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                        T* __restrict__ out, int64_t tokens, int64_t vocab,
                                        int64_t hidden, unsigned long long* first_bad) {
  constexpr int V = nn::kVec<T>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c * V >= hidden) return;
  for (int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    const int64_t id = ids[t];
    nn::Pack<T, V> v;
    if (id < 0 || id >= vocab) {
      if (c == 0 && first_bad) atomicMin(first_bad, static_cast<unsigned long long>(t));
#pragma unroll
      for (int e = 0; e < V; ++e) v.v[e] = from_float<T>(NAN);
    } else {
      v = nn::load_pack<T, V>(table + id * hidden + c * V);
    }
    nn::store_pack<T, V>(out + t * hidden + c * V, v);
  }
}

}  // namespace

int64_t embedding(const Tensor& ids, const Tensor& table, const Tensor& out, bool check) {
  const int64_t tokens = ids.numel(), vocab = table.size(0), hidden = table.size(1);
  if (tokens == 0 || hidden == 0) return -1;
  MARLIN_CHECK(tokens < (int64_t{1} << 31), "embedding", "too many tokens: ", tokens);
  const int device = table.device().index;
  auto stream = static_cast<cudaStream_t>(current_stream(device).handle);
  // A graph being captured cannot wait (nor own a status word): its bad ids show as NaN rows.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MARLIN_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture), "embedding");
  check = check && capture == cudaStreamCaptureStatusNone;
  Tensor status = check ? Tensor::empty({1}, DType::i64, table.device()) : Tensor();
  auto* first_bad = check ? static_cast<unsigned long long*>(status.data_ptr()) : nullptr;
  if (check)
    MARLIN_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream), "embedding");
  const int64_t vec = 16 / static_cast<int64_t>(table.element_size());
  const bool vector_ok = hidden % vec == 0 &&
                         reinterpret_cast<uintptr_t>(table.data_ptr()) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  nn::dispatch_float(table.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    const T* tp = static_cast<const T*>(table.data_ptr());
    T* yp = static_cast<T*>(out.data_ptr());
    if (vector_ok) {
      const dim3 grid(static_cast<unsigned>((hidden / vec + 127) / 128),
                      static_cast<unsigned>(std::min<int64_t>(tokens, 65535)));
      embedding_vector_kernel<T><<<grid, 128, 0, stream>>>(ids.data<int32_t>(), tp, yp, tokens,
                                                           vocab, hidden, first_bad);
    } else {
      const int threads = hidden >= 1024 ? 256 : 128;
      embedding_kernel<T><<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
          ids.data<int32_t>(), tp, yp, vocab, hidden, first_bad);
    }
  });
  MARLIN_CUDA_CHECK_LAUNCH("embedding");
  if (!check) return -1;
  unsigned long long host = 0;
  MARLIN_CUDA_CHECK(cudaMemcpyAsync(&host, first_bad, sizeof(host), cudaMemcpyDeviceToHost, stream),
                    "embedding");
  MARLIN_CUDA_CHECK(cudaStreamSynchronize(stream), "embedding");
  return host == ~0ull ? -1 : static_cast<int64_t>(host);
}

}  // namespace marlin::cuda
