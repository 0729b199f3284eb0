// libFuzzer target for the safetensors reader: any input either fails with marlin::Error or
// yields tensors that lie inside the buffer and survive a write -> read round trip unchanged.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "marlin/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace marlin;
  std::optional<SafetensorsFile> parsed;
  try {
    parsed =
        SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
  } catch (const Error&) {
    return 0;  // refused cleanly
  }
  const SafetensorsFile& file = *parsed;
  NamedTensors tensors;
  volatile uint8_t sink = 0;
  for (const auto& name : file.names()) {
    Tensor t = file.tensor(name);
    const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) sink = sink + bytes[i];  // ASan: inside the buffer
    tensors.emplace_back(name, t);
  }
  // An accepted file must be writable and read back to the same tensors and metadata.
  const std::vector<uint8_t> written = serialize_safetensors(tensors, file.metadata());
  const SafetensorsFile again = SafetensorsFile::from_bytes(written, "fuzz-roundtrip.safetensors");
  if (again.names() != file.names() || again.metadata() != file.metadata()) std::abort();
  for (const auto& [name, t] : tensors) {
    const Tensor u = again.tensor(name);
    if (u.dtype() != t.dtype() || u.shape() != t.shape() ||
        std::memcmp(u.data_ptr(), t.data_ptr(), t.nbytes()) != 0)
      std::abort();
  }
  return 0;
}
