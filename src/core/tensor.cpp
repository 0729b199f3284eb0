// Tensor views, copies between devices, and dtype conversion on the host.
#include "marlin/tensor.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>

#include "core/cuda_check.h"
#include "marlin/allocator.h"
#include "marlin/stream.h"

namespace marlin {

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

namespace {
std::atomic<bool> g_poison{false};
}
void set_poison_allocations(bool on) { g_poison.store(on); }
bool poison_allocations() { return g_poison.load(); }

Storage::~Storage() {
  if (deleter_) deleter_(data_);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  if (device.is_cpu()) {
    const size_t rounded = (nbytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    MARLIN_CHECK(p != nullptr, "Storage::allocate", "out of host memory allocating ", nbytes,
                 " bytes");
    return std::make_shared<Storage>(p, nbytes, device, [](void* q) { std::free(q); });
  }
  MARLIN_CHECK(device.index >= 0 && device.index < cuda_device_count(), "Storage::allocate",
               "device ", device.str(), " is not available (", cuda_device_count(),
               " CUDA devices present)");
  const int index = device.index;
  void* p = CudaCachingAllocator::instance().allocate(nbytes, index);
  return std::make_shared<Storage>(
      p, nbytes, device, [index](void* q) { CudaCachingAllocator::instance().deallocate(q, index); });
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    MARLIN_CHECK(d >= 0, "Tensor::empty", "negative size in shape ", shape_str(shape));
  Tensor t;
  t.storage_ = Storage::allocate(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  if (poison_allocations()) t.fill_bytes(0xff);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_bytes(0);
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device,
                         std::shared_ptr<void> owner) {
  Tensor t;
  const size_t nbytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  t.storage_ = std::make_shared<Storage>(data, nbytes, device,
                                         [owner = std::move(owner)](void*) mutable { owner.reset(); });
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  MARLIN_CHECK(d >= -n && d < n, "Tensor::size", "dim ", d, " out of range for ", describe());
  return shape_[static_cast<size_t>(d < 0 ? d + n : d)];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  MARLIN_CHECK(defined(), "Tensor::data_ptr", "tensor is undefined");
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

namespace {

// Strides that show `shape` over the elements of a tensor of old_shape/old_strides in the same
// row-major order, or nullopt when that needs a copy (PyTorch's rule for view): each run of
// old dims that are contiguous with each other may be split or merged, never mixed with another.
std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& shape) {
  Shape strides(shape.size());
  if (shape_numel(old_shape) == 0 || old_shape.empty()) return contiguous_strides(shape);
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_stride = old_strides.back(), old_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    const size_t i = static_cast<size_t>(d);
    old_numel *= old_shape[i];
    // The chunk ends where the next outer dim does not continue it.
    if (d == 0 || (old_shape[i - 1] != 1 && old_strides[i - 1] != old_numel * chunk_stride)) {
      while (view_d >= 0 && (view_numel < old_numel || shape[static_cast<size_t>(view_d)] == 1)) {
        strides[static_cast<size_t>(view_d)] = view_numel * chunk_stride;
        view_numel *= shape[static_cast<size_t>(view_d)];
        --view_d;
      }
      if (view_numel != old_numel) return std::nullopt;
      if (d > 0) {
        chunk_stride = old_strides[i - 1];
        old_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return strides;
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  Shape resolved = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      MARLIN_CHECK(infer < 0, "Tensor::view", "more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      MARLIN_CHECK(resolved[i] >= 0, "Tensor::view", "bad size in ", shape_str(shape));
      known *= resolved[i];
    }
  }
  if (infer >= 0) {
    MARLIN_CHECK(known > 0 && numel() % known == 0, "Tensor::view", "cannot view ", describe(),
                 " as ", shape_str(shape));
    resolved[static_cast<size_t>(infer)] = numel() / known;
  }
  MARLIN_CHECK(shape_numel(resolved) == numel(), "Tensor::view", "cannot view ", describe(),
               " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = resolved;
  if (is_contiguous()) {
    t.strides_ = contiguous_strides(resolved);
    return t;
  }
  std::optional<Shape> strides = view_strides(shape_, strides_, resolved);
  MARLIN_CHECK(strides.has_value(), "Tensor::view", "cannot view ", describe(), " (strides ",
               shape_str(strides_), ") as ", shape_str(resolved),
               " without a copy; call contiguous() first");
  t.strides_ = std::move(*strides);
  return t;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  const int64_t n = dim();
  MARLIN_CHECK(d >= -n && d < n, "Tensor::narrow", "dim ", d, " out of range for ", describe());
  const size_t i = static_cast<size_t>(d < 0 ? d + n : d);
  MARLIN_CHECK(start >= 0 && length >= 0 && start + length <= shape_[i], "Tensor::narrow",
               "range [", start, ", ", start + length, ") out of bounds for dim ", d, " of ",
               describe());
  Tensor t = *this;
  t.offset_bytes_ += start * strides_[i] * static_cast<int64_t>(element_size());
  t.shape_[i] = length;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  const int64_t n = dim();
  MARLIN_CHECK(d >= -n && d < n, "Tensor::select", "dim ", d, " out of range for ", describe());
  const size_t i = static_cast<size_t>(d < 0 ? d + n : d);
  MARLIN_CHECK(index >= 0 && index < shape_[i], "Tensor::select", "index ", index,
               " out of bounds for dim ", d, " of ", describe());
  Tensor t = narrow(static_cast<int64_t>(i), index, 1);
  t.shape_.erase(t.shape_.begin() + static_cast<std::ptrdiff_t>(i));
  t.strides_.erase(t.strides_.begin() + static_cast<std::ptrdiff_t>(i));
  return t;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  const int64_t n = dim();
  MARLIN_CHECK(d0 >= -n && d0 < n && d1 >= -n && d1 < n, "Tensor::transpose", "dims ", d0, ", ",
               d1, " out of range for ", describe());
  Tensor t = *this;
  const size_t a = static_cast<size_t>(d0 < 0 ? d0 + n : d0);
  const size_t b = static_cast<size_t>(d1 < 0 ? d1 + n : d1);
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::view_as(DType dtype) const {
  MARLIN_CHECK(dtype_size(dtype) == element_size(), "Tensor::view_as", "cannot view ",
               describe(), " as ", dtype_name(dtype), ": element sizes differ");
  Tensor t = *this;
  t.dtype_ = dtype;
  return t;
}

namespace {

// Copies a strided CPU tensor into contiguous memory, one innermost row at a time.
void gather_strided(const Tensor& src, void* dst) {
  const size_t es = src.element_size();
  const int64_t n = src.numel();
  if (n == 0) return;
  const int64_t nd = src.dim();
  if (nd == 0) {
    std::memcpy(dst, src.data_ptr(), es);
    return;
  }
  const auto& shape = src.shape();
  const auto& strides = src.strides();
  const int64_t inner = shape[static_cast<size_t>(nd - 1)];
  const int64_t inner_stride = strides[static_cast<size_t>(nd - 1)];
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  const char* base = static_cast<const char*>(src.data_ptr());
  char* out = static_cast<char*>(dst);
  for (int64_t row = 0; row < n / inner; ++row) {
    int64_t off = 0;
    for (int64_t d = 0; d + 1 < nd; ++d) off += idx[static_cast<size_t>(d)] * strides[static_cast<size_t>(d)];
    const char* p = base + off * static_cast<int64_t>(es);
    if (inner_stride == 1) {
      std::memcpy(out, p, static_cast<size_t>(inner) * es);
    } else {
      for (int64_t j = 0; j < inner; ++j)
        std::memcpy(out + static_cast<size_t>(j) * es, p + j * inner_stride * static_cast<int64_t>(es), es);
    }
    out += static_cast<size_t>(inner) * es;
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < shape[static_cast<size_t>(d)]) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
}

double load_element(const char* p, DType t) {
  switch (t) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::f16: { uint16_t v; std::memcpy(&v, p, 2); return half_bits_to_float(v); }
    case DType::bf16: { uint16_t v; std::memcpy(&v, p, 2); return bf16_bits_to_float(v); }
    case DType::fp8_e4m3: return fp8_e4m3_to_float(static_cast<uint8_t>(*p));
    case DType::u8: return static_cast<uint8_t>(*p);
    case DType::i8: return static_cast<int8_t>(*p);
    case DType::boolean: return *p ? 1.0 : 0.0;
    case DType::i16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DType::i32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::u32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::i64: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
  }
  return 0;
}

void store_element(char* p, DType t, double x) {
  switch (t) {
    case DType::f32: { float v = static_cast<float>(x); std::memcpy(p, &v, 4); return; }
    case DType::f64: std::memcpy(p, &x, 8); return;
    case DType::f16: { uint16_t v = float_to_half_bits(static_cast<float>(x)); std::memcpy(p, &v, 2); return; }
    case DType::bf16: { uint16_t v = float_to_bf16_bits(static_cast<float>(x)); std::memcpy(p, &v, 2); return; }
    case DType::fp8_e4m3: *p = static_cast<char>(float_to_fp8_e4m3(static_cast<float>(x))); return;
    case DType::u8: *p = static_cast<char>(static_cast<uint8_t>(x)); return;
    case DType::i8: *p = static_cast<char>(static_cast<int8_t>(x)); return;
    case DType::boolean: *p = x != 0.0 ? 1 : 0; return;
    case DType::i16: { int16_t v = static_cast<int16_t>(x); std::memcpy(p, &v, 2); return; }
    case DType::i32: { int32_t v = static_cast<int32_t>(x); std::memcpy(p, &v, 4); return; }
    case DType::u32: { uint32_t v = static_cast<uint32_t>(x); std::memcpy(p, &v, 4); return; }
    case DType::i64: { int64_t v = static_cast<int64_t>(x); std::memcpy(p, &v, 8); return; }
  }
}

// A tensor laid out as `rows` runs of `width` contiguous elements, run r (in row-major order)
// starting `r * pitch` elements after the first: what one 2-D copy moves. Head slices of a
// fused projection's output and column blocks of a matrix have this form.
struct RowRuns {
  int64_t rows = 1, width = 1, pitch = 1;
};

std::optional<RowRuns> row_runs(const Tensor& t) {
  int64_t width = 1, rows = 1, pitch = 0;
  bool inner_done = false;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    const int64_t n = t.size(d), s = t.strides()[static_cast<size_t>(d)];
    if (n == 1) continue;
    if (!inner_done && s == width) {
      width *= n;
      continue;
    }
    inner_done = true;
    if (rows == 1) {
      pitch = s;
      rows = n;
    } else if (s == pitch * rows) {  // an outer dim that continues the runs in order
      rows *= n;
    } else {
      return std::nullopt;
    }
  }
  if (rows > 1 && pitch < width) return std::nullopt;  // overlapping runs (broadcast strides)
  return RowRuns{rows, width, rows > 1 ? pitch : width};
}

// rows x width_bytes from src (runs src_pitch bytes apart) to dst (dst_pitch apart), any devices.
// Device-to-device copies stay asynchronous on the current stream; a copy touching host memory
// is waited for, since the caller may reuse that memory at once.
void copy_runs(const char* op, void* dst, Device dst_device, size_t dst_pitch, const void* src,
               Device src_device, size_t src_pitch, size_t width_bytes, size_t rows) {
  if (width_bytes == 0 || rows == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch,
                  width_bytes);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  const Stream stream = current_stream(device);
  auto s = static_cast<cudaStream_t>(stream.handle);
  const bool wait = dst_device.is_cpu() || src_device.is_cpu();
  if (wait) check_not_capturing(stream, op);  // before the copy: a capture must stay valid
  MARLIN_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes, rows,
                                      cudaMemcpyDefault, s),
                    op);
  if (wait) MARLIN_CUDA_CHECK(cudaStreamSynchronize(s), op);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes,
                const char* op) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
#ifdef MARLIN_WITH_CUDA
  const int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  const Stream stream = current_stream(device);
  auto s = static_cast<cudaStream_t>(stream.handle);
  // Within one device the copy is ordered on the current stream like any kernel (and can be
  // captured into a CUDA graph); host memory, or another device's stream, is waited for.
  const bool wait = !(dst_device == src_device);
  if (wait) check_not_capturing(stream, op);  // before the copy: a capture must stay valid
  MARLIN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, s), op);
  if (wait) MARLIN_CUDA_CHECK(cudaStreamSynchronize(s), op);
#else
  (void)op;
  fail_no_cuda("copy_bytes");
#endif
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  if (device().is_cpu()) {
    Tensor out = empty(shape_, dtype_);
    gather_strided(*this, out.data_ptr());
    return out;
  }
  if (const std::optional<RowRuns> runs = row_runs(*this)) {
    // Runs of contiguous elements (a head slice of a fused QKV output): one 2-D copy on the
    // device, no round trip through the host.
    Tensor out = empty(shape_, dtype_, device());
    const size_t es = element_size();
    copy_runs("Tensor::contiguous", out.data_ptr(), out.device(), static_cast<size_t>(runs->width) * es,
              data_ptr(), device(),
              static_cast<size_t>(runs->pitch) * es, static_cast<size_t>(runs->width) * es,
              static_cast<size_t>(runs->rows));
    return out;
  }
  // Other strided device tensors are rare (views made for the host's convenience): go through
  // the host.
  check_not_capturing(current_stream(device().index), "Tensor::contiguous");
  Tensor host = empty(shape_, dtype_);
  Tensor whole = *this;
  whole.offset_bytes_ = 0;
  whole.shape_ = {static_cast<int64_t>(storage_->nbytes() / element_size())};
  whole.strides_ = {1};
  Tensor raw = whole.to(Device::cpu());
  Tensor view = *this;
  view.storage_ = raw.storage_;
  gather_strided(view, host.data_ptr());
  return host.to(device());
}

Tensor Tensor::clone() const {
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, device());
  copy_bytes(out.data_ptr(), out.device(), src.data_ptr(), src.device(), nbytes(), "Tensor::clone");
  return out;
}

Tensor Tensor::to(Device target) const {
  if (device() == target) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, target);
  copy_bytes(out.data_ptr(), target, src.data_ptr(), src.device(), nbytes(), "Tensor::to");
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return *this;
  if (!device().is_cpu()) {
    // Converted on the host (ops::cast converts on the device, as a captured step needs).
    check_not_capturing(current_stream(device().index), "Tensor::to");
    return to(Device::cpu()).to(target).to(device());
  }
  Tensor src = contiguous();
  Tensor out = empty(shape_, target);
  const char* in = static_cast<const char*>(src.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  const size_t is = element_size(), os = out.element_size();
  for (int64_t i = 0; i < numel(); ++i)
    store_element(o + static_cast<size_t>(i) * os, target, load_element(in + static_cast<size_t>(i) * is, dtype_));
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  MARLIN_CHECK(shape_ == src.shape_ && dtype_ == src.dtype_, "Tensor::copy_from",
               "cannot copy ", src.describe(), " into ", describe());
  Tensor s = src.contiguous();
  if (is_contiguous()) {
    copy_bytes(data_ptr(), device(), s.data_ptr(), s.device(), nbytes(), "Tensor::copy_from");
    return;
  }
  // A destination of runs (a column block of a wider matrix): one 2-D copy.
  const std::optional<RowRuns> runs = row_runs(*this);
  MARLIN_CHECK(runs.has_value(), "Tensor::copy_from",
               "destination must be contiguous or rows of contiguous runs, got ", describe(),
               " with strides ", shape_str(strides_));
  const size_t es = element_size();
  copy_runs("Tensor::copy_from", data_ptr(), device(), static_cast<size_t>(runs->pitch) * es,
            s.data_ptr(), s.device(),
            static_cast<size_t>(runs->width) * es, static_cast<size_t>(runs->width) * es,
            static_cast<size_t>(runs->rows));
}

void Tensor::fill_bytes(uint8_t byte) {
  MARLIN_CHECK(is_contiguous(), "Tensor::fill_bytes", "needs a contiguous tensor, got ",
               describe());
  if (nbytes() == 0) return;
  if (device().is_cpu()) {
    std::memset(data_ptr(), byte, nbytes());
    return;
  }
#ifdef MARLIN_WITH_CUDA
  auto s = static_cast<cudaStream_t>(current_stream(device().index).handle);
  MARLIN_CUDA_CHECK(cudaMemsetAsync(data_ptr(), byte, nbytes(), s), "Tensor::fill_bytes");
#else
  fail_no_cuda("Tensor::fill_bytes");
#endif
}

double Tensor::item_as_double(const Shape& index) const {
  MARLIN_CHECK(device().is_cpu(), "Tensor::item_as_double", "needs a CPU tensor, got ",
               describe());
  MARLIN_CHECK(static_cast<int64_t>(index.size()) == dim(), "Tensor::item_as_double", "index ",
               shape_str(index), " does not match ", describe());
  int64_t off = 0;
  for (size_t i = 0; i < index.size(); ++i) {
    MARLIN_CHECK(index[i] >= 0 && index[i] < shape_[i], "Tensor::item_as_double", "index ",
                 shape_str(index), " out of bounds for ", describe());
    off += index[i] * strides_[i];
  }
  return load_element(static_cast<const char*>(data_ptr()) + off * static_cast<int64_t>(element_size()),
                      dtype_);
}

std::vector<float> Tensor::to_float_vector() const {
  Tensor host = to(Device::cpu()).contiguous();
  std::vector<float> out(static_cast<size_t>(numel()));
  const char* p = static_cast<const char*>(host.data_ptr());
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<float>(load_element(p + i * element_size(), dtype_));
  return out;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device().str();
}

}  // namespace marlin
