// The wgmma GEMM over the tile layout (gemm_q_wgmma.cu): batched decode on Hopper.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "marlin/quant.h"
#include "marlin/tensor.h"

namespace marlin::cuda {

constexpr int kMaxWgmmaRows = 64;  // the decode-size variants' most rows; above, tiles of 96 or 128
constexpr int kMaxWideRows = 256;  // the most rows routed to those tiles (tests force more)

// C[M, N] = A @ W over W.tiled on the wgmma kernel, for MARLIN_WGMMA_ROWS (9 unless set; 0
// turns it off; 17 for FP8 and INT2 weights of over 2^27 values) <= M <= 64, and in tiles of 96
// or 128 rows for 65-256 rows of weights of over 2^24 values (large batches; MARLIN_WGMMA_WIDE=0 turns
// those off), on an sm_90a build and a Hopper GPU, where its grid fills at least half the SMs (a
// quarter for weights over 4 MB); false, doing nothing, elsewhere.
bool gemm_q_wgmma(const Tensor& A, const QuantizedWeight& W, const Tensor& bias, Tensor& C, cudaStream_t stream);
// Whether the kernel can run on `device` (the build and the GPU).
bool wgmma_gemm_available(int device);
// Tests: the kernel from min_rows rows (0: never), `forced` also where its grid is small.
void set_wgmma_gemm(int min_rows, bool forced);
// Tests: A laid out by the kernel itself (0), by a layout kernel before it (1), or chosen by the
// length of a block's K split (-1, as MARLIN_WGMMA_LAYOUT unset).
void set_wgmma_layout(int mode);
// Tests: whether more than 64 rows take the kernel's tiles of 96 or 128 rows.
void set_wgmma_wide(bool on);
void reset_wgmma_gemm();  // both back to the environment's setting
int64_t wgmma_gemm_launches();  // kernel launches so far, all devices

}  // namespace marlin::cuda
