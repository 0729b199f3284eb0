// Where row r of a tensor [..., N] starts when the leading dims are strided (a head slice of a
// fused QKV output, a narrowed rotary part): shared by the CPU and CUDA kernels of ops_nn.
#pragma once

#include <cstdint>

#include "marlin/dtype.h"  // MARLIN_HD
#include "marlin/tensor.h"

namespace marlin::kernels {

struct RowLayout {
  static constexpr int kMaxDims = 4;
  int dims = 0;                   // leading dims after merging contiguous neighbours
  int64_t size[kMaxDims] = {};    // innermost last
  int64_t stride[kMaxDims] = {};  // in elements

  // Offset in elements of the first element of row r (rows in row-major order).
  MARLIN_HD int64_t offset(int64_t r) const {
    int64_t off = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const int64_t i = r % size[d];
      r /= size[d];
      off += i * stride[d];
    }
    return off;
  }
};

// The leading dims of t (all but the last), neighbours merged where contiguous with each other
// and size-1 dims dropped; false when more than kMaxDims remain.
inline bool make_row_layout(const Tensor& t, RowLayout& out) {
  out = RowLayout{};
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    const int64_t n = t.size(d), s = t.strides()[static_cast<size_t>(d)];
    if (n == 1) continue;
    if (out.dims > 0 && out.stride[out.dims - 1] == s * n) {
      out.size[out.dims - 1] *= n;
      out.stride[out.dims - 1] = s;
      continue;
    }
    if (out.dims == RowLayout::kMaxDims) return false;
    out.size[out.dims] = n;
    out.stride[out.dims] = s;
    ++out.dims;
  }
  return true;
}

// make_row_layout or an error naming `op` and the tensor.
inline RowLayout rows_of(const Tensor& t, const char* op) {
  RowLayout layout;
  MARLIN_CHECK(make_row_layout(t, layout), op, "too many strided leading dims in ", t.describe());
  return layout;
}

}  // namespace marlin::kernels
