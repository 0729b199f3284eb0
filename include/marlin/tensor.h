// Tensor: a typed, strided view of shared storage on the CPU or a CUDA device. Copies are
// explicit (to(), clone(), copy_from()); views (view, narrow, select, transpose) share storage.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "marlin/device.h"
#include "marlin/dtype.h"
#include "marlin/error.h"

namespace marlin {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// A block of bytes on one device, freed by its deleter when the last tensor lets go.
class Storage {
 public:
  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> deleter)
      : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  // CPU memory is 64-byte aligned; CUDA memory comes from the caching allocator.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::function<void(void*)> deleter_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() is false

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Wraps memory owned elsewhere; `owner` (may be empty) is kept alive as long as the tensor.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                          std::shared_ptr<void> owner = {});
  // Copies host values into a new contiguous CPU tensor; T's size must match the dtype's.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t element_size() const { return dtype_size(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  int64_t offset_bytes() const { return offset_bytes_; }

  void* data_ptr() const;
  template <typename T>
  T* data() const {
    MARLIN_CHECK(sizeof(T) == element_size(), "Tensor::data", "element size ", sizeof(T),
                 " does not match dtype ", dtype_name(dtype_));
    return static_cast<T*>(data_ptr());
  }

  // Views sharing storage.
  // One dim may be -1. A strided tensor can be viewed where no copy is needed (PyTorch's rule:
  // dims are split or merged only within runs of dims contiguous with each other), e.g. the
  // [T, N] column slice of a fused projection as [T, heads, head_dim]; otherwise an error.
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const { return contiguous().view(shape); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  // Reinterprets the bytes as another dtype of the same element size (contiguous last dim).
  Tensor view_as(DType dtype) const;

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;  // same tensor if already there
  Tensor to(DType dtype) const;    // converts values (rounding to nearest even)
  // Same shape and dtype, any devices. The destination may be strided where its elements are
  // runs of contiguous ones (a column block of a wider matrix: one 2-D copy).
  void copy_from(const Tensor& src);
  void fill_bytes(uint8_t byte);      // poisons or clears every byte of a contiguous tensor

  // CPU-only element access in float64 (any dtype); for tests and small host work.
  double item_as_double(const Shape& index) const;
  std::vector<float> to_float_vector() const;  // values in row-major order, any device

  // "f16[32, 4096] cuda:0"
  std::string describe() const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_bytes_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::f32;
};

Shape contiguous_strides(const Shape& shape);

// Testing aid: when on, every new allocation is filled with 0xff bytes (NaN in f16, bf16 and
// f32), so an output element a kernel fails to write shows up as NaN.
void set_poison_allocations(bool on);
bool poison_allocations();

// Copies `nbytes` between any two devices. A copy within one CUDA device is ordered on its current
// stream like a kernel (so a CUDA graph can capture it); one touching host memory or another
// device is waited for, and is an error naming `op` while the stream is being captured.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes,
                const char* op = "copy_bytes");

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype) {
  MARLIN_CHECK(sizeof(T) == dtype_size(dtype), "Tensor::from_vector", "element size ", sizeof(T),
               " does not match dtype ", dtype_name(dtype));
  MARLIN_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "Tensor::from_vector",
               values.size(), " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, dtype);
  if (!values.empty()) std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(T));
  return t;
}

}  // namespace marlin
