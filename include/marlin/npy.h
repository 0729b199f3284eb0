// NumPy .npy files (format 1.0 for writing; 1.0-3.0 read), little-endian, C order: the
// exchange format of `marlin preprocess` and of the test fixtures.
#pragma once

#include <string>

#include "marlin/tensor.h"

namespace marlin {

// Writes a tensor of f32, f16, f64, u8, i8, i16, i32, i64 or bool (any device) to `path`.
void save_npy(const std::string& path, const Tensor& tensor);
// Reads '<f4', '<f2', '<f8', '|u1', '|i1', '<i2', '<i4', '<i8' or '|b1' arrays into a CPU tensor.
Tensor load_npy(const std::string& path);

}  // namespace marlin
