// CPU embedding lookup: row copies (ids are checked by ops/nn_ops.cpp).
#include <cstring>

#include "kernels/cpu/nn_kernels.h"
#include "marlin/thread_pool.h"

namespace marlin::cpu {

void embedding(const Tensor& ids, const Tensor& table, const Tensor& out) {
  const int64_t tokens = ids.numel(), hidden = table.size(1);
  const size_t row_bytes = static_cast<size_t>(hidden) * table.element_size();
  const int32_t* id = ids.data<int32_t>();
  const char* src = static_cast<const char*>(table.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  parallel_for(0, tokens, 64, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      std::memcpy(dst + static_cast<size_t>(t) * row_bytes, src + static_cast<size_t>(id[t]) * row_bytes,
                  row_bytes);
  });
}

}  // namespace marlin::cpu
