// Helpers of the vision tests: fixture paths and manifest, layout changes, batching, error
// measures that turn an unwritten (NaN-poisoned) element into a failure.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "marlin/npy.h"
#include "marlin/tensor.h"

namespace marlin::testing {

inline std::string vision_fixture(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/vision/" + name;
}

inline const nlohmann::json& vision_manifest() {
  static const nlohmann::json manifest = [] {
    std::ifstream f(vision_fixture("manifest.json"));
    return nlohmann::json::parse(f);
  }();
  return manifest;
}

inline Tensor load_vision_npy(const std::string& name) { return load_npy(vision_fixture(name)); }

// [C, H, W] <-> [H, W, C] (and with a leading batch dimension).
inline Tensor to_nhwc(const Tensor& t) {
  const int64_t c = t.dim() - 3;
  return t.transpose(c, c + 1).transpose(c + 1, c + 2).contiguous();
}
inline Tensor to_nchw(const Tensor& t) {
  const int64_t h = t.dim() - 3;
  return t.transpose(h + 1, h + 2).transpose(h, h + 1).contiguous();
}

// [N, ...] from images of one shape.
inline Tensor stack(const std::vector<Tensor>& images) {
  Shape s = images[0].shape();
  s.insert(s.begin(), static_cast<int64_t>(images.size()));
  Tensor out = Tensor::empty(s, images[0].dtype(), images[0].device());
  for (size_t i = 0; i < images.size(); ++i)
    out.select(0, static_cast<int64_t>(i)).copy_from(images[i].contiguous());
  return out;
}

struct Difference {
  double max = 0;         // largest |a - b|; infinity for a non-finite value or a shape mismatch
  double fraction = 0;    // share of elements that differ by more than `tolerance`
};

inline Difference difference(const Tensor& got, const Tensor& want, double tolerance = 1e-6) {
  Difference d;
  if (got.shape() != want.shape()) return {INFINITY, 1.0};
  const std::vector<float> a = got.to_float_vector(), b = want.to_float_vector();
  size_t over = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!std::isfinite(a[i]) || !std::isfinite(e)) return {INFINITY, 1.0};
    d.max = std::max(d.max, e);
    over += e > tolerance;
  }
  d.fraction = a.empty() ? 0.0 : static_cast<double>(over) / static_cast<double>(a.size());
  return d;
}

// Runs fn and expects a marlin::Error whose message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "error '" << e.what() << "' does not mention '" << needle << "'";
  }
}

}  // namespace marlin::testing
