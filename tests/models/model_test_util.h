// Shared helpers of the model tests: the fixtures of tools/make_tiny*_models.py, token ids,
// logits error measures, greedy decoding and scratch directories.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "marlin/model.h"
#include "marlin/npy.h"
#include "test_util.h"

namespace marlin::testing {

// The directory of a model fixture of tests/fixtures/models.
inline std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

inline std::vector<int32_t> load_ids(const std::string& path) {
  const Tensor t = load_npy(path);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

inline Tensor ids_tensor(const std::vector<int32_t>& ids) {
  return Tensor::from_vector(ids, {static_cast<int64_t>(ids.size())}, DType::i32);
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// ||x - y|| / ||y|| over all elements; a non-finite x gives infinity.
inline double relative_error(const std::vector<float>& x, const std::vector<float>& y) {
  EXPECT_EQ(x.size(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    if (!std::isfinite(x[i])) return INFINITY;
    num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    den += double(y[i]) * y[i];
  }
  return std::sqrt(num / den);
}

inline double relative_error(const Tensor& a, const Tensor& b) {
  return relative_error(a.to_float_vector(), b.to_float_vector());
}

// The greedy token of the last row of logits [..., V].
inline int32_t argmax_last_row(const Tensor& logits) {
  const std::vector<float> v = logits.to_float_vector();
  const int64_t V = logits.size(-1);
  const float* row = v.data() + v.size() - V;
  return static_cast<int32_t>(std::max_element(row, row + V) - row);
}

// n greedy tokens after the prompt through the cache: the first from the prompt's logits, each
// later one from a one-token step.
inline std::vector<int32_t> greedy_tokens(const CausalLM& model, KVCache& cache,
                                          const std::vector<int32_t>& prompt, size_t n) {
  Tensor logits = model.forward(ids_tensor(prompt), &cache);
  std::vector<int32_t> got;
  for (size_t step = 0; step < n; ++step) {
    got.push_back(argmax_last_row(logits));
    if (step + 1 < n) logits = model.forward(ids_tensor({got.back()}), &cache);
  }
  return got;
}

// The fp32 logits of the fixture's prompt within `bound` of Transformers' (logits.npy).
inline void expect_logits_match_transformers(const char* name, double bound) {
  const std::string dir = fixture_dir(name);
  const auto model = load_model(dir);
  const Tensor ref = load_npy(dir + "/logits.npy");
  const Tensor logits = model->forward(ids_tensor(load_ids(dir + "/prompt_ids.npy")));
  ASSERT_EQ(logits.shape(), ref.shape());
  const double err = relative_error(logits, ref);
  std::printf("[ %s ] fp32 logits relative error %.3g\n", name, err);
  EXPECT_LT(err, bound);
}

// The prompt fed in two chunks (the first 5 tokens, then the rest over the cache) gives the
// logits of one prefill.
inline void expect_chunked_prefill_matches_transformers(const char* name) {
  const std::string dir = fixture_dir(name);
  const auto model = load_model(dir);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const Tensor ref = load_npy(dir + "/logits.npy");
  KVCache cache = model->make_cache(32);
  const int64_t split = 5, T = static_cast<int64_t>(prompt.size());
  model->forward(ids_tensor({prompt.begin(), prompt.begin() + split}), &cache);
  const Tensor tail = model->forward(ids_tensor({prompt.begin() + split, prompt.end()}), &cache);
  EXPECT_LT(relative_error(tail, ref.narrow(0, split, T - split).contiguous()), 1e-4);
}

// Prompts a and b of one length as a batch [2, T] give each prompt's own logits, without and
// then with `cache` (two rows, empty), which holds both prompts afterwards.
inline void expect_batch_of_two_matches_single_runs(const CausalLM& model, KVCache& cache,
                                                    const std::vector<int32_t>& a,
                                                    const std::vector<int32_t>& b) {
  std::vector<int32_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  const int64_t T = static_cast<int64_t>(a.size());
  const Tensor batch_ids = Tensor::from_vector(both, {2, T}, DType::i32);
  const Tensor la = model.forward(ids_tensor(a)), lb = model.forward(ids_tensor(b));
  const Tensor batch = model.forward(batch_ids);
  ASSERT_EQ(batch.shape(), (Shape{2, T, model.config().vocab_size}));
  EXPECT_LT(relative_error(batch.select(0, 0).contiguous(), la), 1e-5);
  EXPECT_LT(relative_error(batch.select(0, 1).contiguous(), lb), 1e-5);
  const Tensor cached = model.forward(batch_ids, &cache);
  EXPECT_LT(relative_error(cached.select(0, 1).contiguous(), lb), 1e-5);
}

// FP8, FP4 and INT2 weights (group 32): the relative logit errors against Transformers' fp32
// logits, checked to grow as the format shrinks.
inline std::array<double, 3> expect_quantized_error_order(const char* name) {
  const std::string dir = fixture_dir(name);
  const Tensor ref = load_npy(dir + "/logits.npy");
  const Tensor ids = ids_tensor(load_ids(dir + "/prompt_ids.npy"));
  std::array<double, 3> errors{};
  const int bits[3] = {8, 4, 2};
  for (int i = 0; i < 3; ++i) {
    ModelLoadOptions options;
    options.bits = bits[i];
    options.group_size = 32;
    errors[i] = relative_error(load_model(dir, options)->forward(ids), ref);
  }
  std::printf("[ %s ] relative logit error, group 32: FP8 %.3g, FP4 %.3g, INT2 %.3g\n", name,
              errors[0], errors[1], errors[2]);
  EXPECT_GT(errors[0], 0.0);
  EXPECT_LT(errors[0], errors[1]);
  EXPECT_LT(errors[1], errors[2]);
  return errors;
}

// A decode step whose greedy token `ours` is not Transformers' `expected` passes only where
// Transformers' own logits (ref_row) nearly tie. A run whose logits are off by `tolerance` (rms,
// relative) moves the gap between two logits by about sqrt(2) * tolerance * rms in rms terms, and
// over 32 steps and a vocabulary a 2-sigma move is common: a tie is a gap under 3 * tolerance * rms.
inline void expect_near_tie(const float* ref_row, int64_t V, int64_t ours, int32_t expected,
                            double tolerance, int64_t step) {
  double rms = 0;
  for (int64_t v = 0; v < V; ++v) rms += double(ref_row[v]) * ref_row[v];
  rms = std::sqrt(rms / V);
  EXPECT_LT(ref_row[expected] - ref_row[ours], 3 * tolerance * rms)
      << "step " << step << ": token " << ours << " where Transformers clearly prefers " << expected;
}

// A device and dtype the fixtures run on, with the bound of their logits' relative error.
struct Backend {
  const char* name;
  Device device;
  DType dtype;
  double tolerance;
};

struct TeacherForcedDecode {
  double error;      // of all decoded logits [steps, V] against Transformers' (ref_steps)
  int other_tokens;  // steps whose greedy token was not Transformers' (near ties)
};

// greedy.size() decode steps after a prefill whose logits are `got`, teacher-forced with
// Transformers' greedy tokens (every step is compared); a step whose own greedy token differs
// passes only on a near tie of Transformers' logits (expect_near_tie).
inline TeacherForcedDecode teacher_forced_decode(const CausalLM& model, KVCache& cache, std::vector<float> got,
                                                 const std::vector<int32_t>& greedy,
                                                 const std::vector<float>& ref_steps, double tolerance) {
  const int64_t V = model.config().vocab_size, steps = static_cast<int64_t>(greedy.size());
  std::vector<float> decoded;
  int other_tokens = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const float* row = got.data() + got.size() - V;
    const float* ref_row = ref_steps.data() + s * V;
    decoded.insert(decoded.end(), row, row + V);
    const int64_t ours = std::max_element(row, row + V) - row;
    const int32_t expected = greedy[static_cast<size_t>(s)];
    if (ours != expected) {
      ++other_tokens;
      expect_near_tie(ref_row, V, ours, expected, tolerance, s);
    }
    if (s + 1 < steps) got = model.forward(ids_tensor({expected}), &cache).to_float_vector();
  }
  return {relative_error(decoded, ref_steps), other_tokens};
}

// Quantized weights (8, 4, 2 bits, group 32) on the GPU in `dtype` compute what the CPU computes
// in f32 with the same weights: the prompt's logits, then those of one-token decode steps over
// the cache (on CUDA, the GEMM chain that runs each RMSNorm inside the GEMMs), teacher-forced
// with the fixture's greedy tokens.
inline void expect_quantized_cuda_matches_cpu(const char* name, DType dtype = DType::bf16) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = fixture_dir(name);
  const std::vector<int32_t> prompt = load_ids(dir + "/prompt_ids.npy");
  const std::vector<int32_t> greedy = load_ids(dir + "/greedy_ids.npy");
  const size_t steps = std::min<size_t>(greedy.size(), 4);
  auto run = [&](const CausalLM& model, std::vector<float>& prefill, std::vector<float>& decode) {
    KVCache cache = model.make_cache(32);
    prefill = model.forward(ids_tensor(prompt), &cache).to_float_vector();
    for (size_t s = 0; s < steps; ++s) {
      const std::vector<float> v = model.forward(ids_tensor({greedy[s]}), &cache).to_float_vector();
      decode.insert(decode.end(), v.begin(), v.end());
    }
  };
  for (int bits : {8, 4, 2}) {
    ModelLoadOptions options;
    options.bits = bits;
    options.group_size = 32;
    std::vector<float> cpu, cpu_decode, gpu, gpu_decode;
    run(*load_model(dir, options), cpu, cpu_decode);
    options.device = Device::cuda(0);
    options.dtype = dtype;
    run(*load_model(dir, options), gpu, gpu_decode);
    const double err = relative_error(gpu, cpu), decode_err = relative_error(gpu_decode, cpu_decode);
    std::printf("[ %s bits %d ] cuda %s vs cpu f32: prompt %.3g, %zu decode steps %.3g\n", name, bits,
                std::string(dtype_name(dtype)).c_str(), err, steps, decode_err);
    EXPECT_LT(err, 3e-2) << "bits " << bits;
    EXPECT_LT(decode_err, 3e-2) << "bits " << bits << " decode";
  }
}

// A fresh scratch directory under the system temp directory, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name) : dir_(std::filesystem::temp_directory_path() / name) {
    std::filesystem::remove_all(dir_);
  }
  ~TempDir() { std::filesystem::remove_all(dir_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return dir_.string(); }
  std::filesystem::path path() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace marlin::testing
