// NumPy .npy reading and writing: a magic string, a Python-dict header, then raw C-order data.
#include <cstring>
#include <fstream>
#include <sstream>

#include "marlin/npy.h"

namespace marlin {
namespace {

struct DescrName {
  DType dtype;
  const char* descr;
};
constexpr DescrName kDescrs[] = {
    {DType::f32, "<f4"}, {DType::f16, "<f2"}, {DType::f64, "<f8"}, {DType::u8, "|u1"},
    {DType::i8, "|i1"},  {DType::i16, "<i2"}, {DType::i32, "<i4"}, {DType::i64, "<i8"},
    {DType::boolean, "|b1"},
};

// The text after `'key':` in the header dict, up to the next top-level comma or brace.
std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  const size_t k = header.find("'" + key + "'");
  MARLIN_CHECK(k != std::string::npos, "load_npy", path, ": header has no '", key, "': ", header);
  size_t at = header.find(':', k);
  MARLIN_CHECK(at != std::string::npos, "load_npy", path, ": malformed header ", header);
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  if (at < header.size() && header[at] == '(') {
    const size_t close = header.find(')', at);
    MARLIN_CHECK(close != std::string::npos, "load_npy", path, ": malformed shape in ", header);
    return header.substr(at, close - at + 1);
  }
  size_t end = at;
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  return header.substr(at, end - at);
}

}  // namespace

void save_npy(const std::string& path, const Tensor& tensor) {
  const char* descr = nullptr;
  for (const auto& d : kDescrs)
    if (d.dtype == tensor.dtype()) descr = d.descr;
  MARLIN_CHECK(descr != nullptr, "save_npy", "dtype ", dtype_name(tensor.dtype()), " has no .npy form here");
  std::string shape = "(";
  for (int64_t d = 0; d < tensor.dim(); ++d) shape += std::to_string(tensor.size(d)) + (tensor.dim() == 1 ? ",)" : d + 1 < tensor.dim() ? ", " : ")");
  if (tensor.dim() == 0) shape += ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces so the data starts at a multiple of 64 bytes, ending the header with '\n'.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  const Tensor host = tensor.to(Device::cpu()).contiguous();
  std::ofstream out(path, std::ios::binary);
  MARLIN_CHECK(out.good(), "save_npy", "cannot write ", path);
  const uint16_t header_len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(static_cast<char>(header_len & 0xff)).put(static_cast<char>(header_len >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  if (host.numel() > 0) out.write(static_cast<const char*>(host.data_ptr()), static_cast<std::streamsize>(host.nbytes()));
  MARLIN_CHECK(out.good(), "save_npy", "write to ", path, " failed");
}

Tensor load_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MARLIN_CHECK(in.good(), "load_npy", "cannot open ", path);
  char magic[8] = {};
  in.read(magic, 8);
  MARLIN_CHECK(in.good() && std::memcmp(magic, "\x93NUMPY", 6) == 0, "load_npy", path,
               ": not a .npy file");
  const int major = static_cast<uint8_t>(magic[6]);
  MARLIN_CHECK(major >= 1 && major <= 3, "load_npy", path, ": unknown .npy version ", major);
  uint8_t len_bytes[4] = {};
  in.read(reinterpret_cast<char*>(len_bytes), major == 1 ? 2 : 4);
  const uint32_t header_len = major == 1 ? (len_bytes[0] | (len_bytes[1] << 8))
                                         : (len_bytes[0] | (len_bytes[1] << 8) | (len_bytes[2] << 16) |
                                            (static_cast<uint32_t>(len_bytes[3]) << 24));
  MARLIN_CHECK(header_len < (1u << 20), "load_npy", path, ": header of ", header_len, " bytes");
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  MARLIN_CHECK(in.good(), "load_npy", path, ": truncated header");
  std::string descr = dict_value(header, "descr", path);
  descr = descr.substr(1, descr.size() >= 2 ? descr.size() - 2 : 0);  // strip quotes
  DType dtype{};
  bool known = false;
  for (const auto& d : kDescrs)
    if (descr == d.descr) {
      dtype = d.dtype;
      known = true;
    }
  MARLIN_CHECK(known, "load_npy", path, ": unsupported dtype '", descr, "'");
  MARLIN_CHECK(dict_value(header, "fortran_order", path) == "False", "load_npy", path,
               ": Fortran-ordered arrays are not supported");
  Shape shape;
  std::string dims = dict_value(header, "shape", path);
  for (char& ch : dims)
    if (ch == '(' || ch == ')' || ch == ',') ch = ' ';
  std::istringstream ss(dims);
  for (int64_t d; ss >> d;) {
    MARLIN_CHECK(d >= 0, "load_npy", path, ": negative dimension in ", header);
    shape.push_back(d);
  }
  Tensor t = Tensor::empty(shape, dtype);
  if (t.numel() > 0) in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  MARLIN_CHECK(in.good(), "load_npy", path, ": file ends before its ", t.nbytes(), " data bytes");
  return t;
}

}  // namespace marlin
