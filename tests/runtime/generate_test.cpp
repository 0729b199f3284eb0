// generate on the tiny Transformers fixtures (CPU, f32): greedy reproduces Transformers' greedy
// continuation, seeds repeat, eos stops, the streamer sees every token, batches (of one length or
// of different lengths, padded with a mask or not) equal single runs, and bad lengths, masks or
// parameters are errors. Also the `marlin generate` CLI end to end.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "marlin/error.h"
#include "marlin/generate.h"
#include "marlin/npy.h"

namespace marlin {
namespace {

const char* const kFixtures[] = {"llama_gqa", "llama_tied", "mistral", "qwen2", "qwen2_bf16", "qwen3"};

std::string fixture_dir(const std::string& name) {
  return std::string(MARLIN_TEST_FIXTURES) + "/models/" + name;
}

std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> out;
  for (const float v : t.to_float_vector()) out.push_back(static_cast<int64_t>(v));
  return out;
}

// Transformers' greedy loop that made the fixtures: no penalty, no eos.
GenerationConfig greedy_config(int64_t n) {
  GenerationConfig c;
  c.max_new_tokens = n;
  c.do_sample = false;
  c.repetition_penalty = 1.0f;
  c.eos_token_id = {};
  return c;
}

struct Fixture {
  std::unique_ptr<CausalLM> model;
  std::vector<int64_t> prompt, greedy;
};

Fixture load(const std::string& name) {
  const std::string dir = fixture_dir(name);
  ModelLoadOptions options;
  options.dtype = DType::f32;
  return {load_model(dir, options), ints(load_npy(dir + "/prompt_ids.npy")),
          ints(load_npy(dir + "/greedy_ids.npy"))};
}

Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return Tensor::from_vector(ids, {static_cast<int64_t>(ids.size())}, DType::i64);
}

class GenerateFixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GenerateFixtureTest, GreedyMatchesTransformers) {
  const Fixture f = load(GetParam());
  const auto n = static_cast<int64_t>(f.greedy.size());
  std::vector<int64_t> streamed;
  GenerationStats stats;
  const Tensor out = generate(*f.model, ids_tensor(f.prompt), greedy_config(n), nullptr,
                              [&](int64_t id) { streamed.push_back(id); }, &stats);
  ASSERT_EQ(out.shape(), (Shape{static_cast<int64_t>(f.prompt.size()) + n}));
  const std::vector<int64_t> all = ints(out);
  EXPECT_EQ(std::vector<int64_t>(all.begin(), all.begin() + f.prompt.size()), f.prompt);
  EXPECT_EQ(std::vector<int64_t>(all.begin() + f.prompt.size(), all.end()), f.greedy);
  EXPECT_EQ(streamed, f.greedy);
  EXPECT_EQ(stats.generated_tokens, n);
  EXPECT_EQ(stats.prompt_tokens, static_cast<int64_t>(f.prompt.size()));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateFixtureTest, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return std::string(info.param); });

TEST(Generate, TemperatureZeroIsGreedyEvenWhenSampling) {
  const Fixture f = load("llama_gqa");
  GenerationConfig c = greedy_config(8);
  c.do_sample = true;
  c.temperature = 0.0f;
  const std::vector<int64_t> all = ints(generate(*f.model, ids_tensor(f.prompt), c));
  EXPECT_EQ(std::vector<int64_t>(all.end() - 8, all.end()),
            std::vector<int64_t>(f.greedy.begin(), f.greedy.begin() + 8));
}

TEST(Generate, SameSeedSameTokensOtherSeedOtherTokens) {
  const Fixture f = load("llama_tied");
  GenerationConfig c;  // the original defaults: sampling at 0.7, top-p 0.9, top-k 50
  c.max_new_tokens = 24;
  c.eos_token_id = {};
  c.temperature = 1.5f;  // the random models are confident; make the draws matter
  c.seed = 7;
  const std::vector<int64_t> a = ints(generate(*f.model, ids_tensor(f.prompt), c));
  const std::vector<int64_t> b = ints(generate(*f.model, ids_tensor(f.prompt), c));
  EXPECT_EQ(a, b);
  c.seed = 8;
  EXPECT_NE(ints(generate(*f.model, ids_tensor(f.prompt), c)), a);
}

TEST(Generate, EosStopsAndIsKept) {
  // mistral's greedy continuation reaches token 2 at step 12.
  const Fixture f = load("mistral");
  ASSERT_EQ(f.greedy[12], 2);
  GenerationConfig c = greedy_config(32);
  c.eos_token_id = {999, 2};
  std::vector<int64_t> streamed;
  const std::vector<int64_t> all =
      ints(generate(*f.model, ids_tensor(f.prompt), c, nullptr,
                    [&](int64_t id) { streamed.push_back(id); }));
  const std::vector<int64_t> expected(f.greedy.begin(), f.greedy.begin() + 13);
  EXPECT_EQ(std::vector<int64_t>(all.begin() + f.prompt.size(), all.end()), expected);
  EXPECT_EQ(streamed, expected);
}

TEST(Generate, BatchOfEqualLengthsPadsFinishedRows) {
  const Fixture f = load("mistral");
  std::vector<int64_t> other = f.prompt;
  other[0] = (other[0] + 1) % 200;
  GenerationConfig c = greedy_config(20);
  c.eos_token_id = {2};
  c.pad_token_id = -1;
  const auto single = [&](const std::vector<int64_t>& p) {
    const std::vector<int64_t> all = ints(generate(*f.model, ids_tensor(p), c));
    return std::vector<int64_t>(all.begin() + p.size(), all.end());
  };
  const std::vector<int64_t> a = single(f.prompt), b = single(other);
  std::vector<int64_t> flat = f.prompt;
  flat.insert(flat.end(), other.begin(), other.end());
  const Tensor batch = Tensor::from_vector(flat, {2, static_cast<int64_t>(f.prompt.size())},
                                           DType::i64);
  std::vector<int64_t> streamed;
  const Tensor out = generate(*f.model, batch, c, nullptr,
                              [&](int64_t id) { streamed.push_back(id); });
  const int64_t T = static_cast<int64_t>(f.prompt.size());
  const int64_t width = T + static_cast<int64_t>(std::max(a.size(), b.size()));
  ASSERT_EQ(out.shape(), (Shape{2, width}));
  const std::vector<int64_t> all = ints(out);
  for (int row = 0; row < 2; ++row) {
    const std::vector<int64_t>& want = row == 0 ? a : b;
    for (int64_t j = 0; j < width - T; ++j)
      EXPECT_EQ(all[row * width + T + j], j < static_cast<int64_t>(want.size()) ? want[j] : -1)
          << "row " << row << " token " << j;
  }
  EXPECT_EQ(streamed.size(), a.size() + b.size());
}

// Prompts of lengths 3, 12 and 7 in one batch: each row generates its single run's greedy
// tokens and stops at its own eos; the streamer sees each step's tokens in row order; a padded
// tensor with an attention mask (left or right padding) gives the same rows.
TEST_P(GenerateFixtureTest, PromptsOfDifferentLengthsMatchSingleRuns) {
  const Fixture f = load(GetParam());
  ASSERT_EQ(f.prompt.size(), 12u);
  const std::vector<int64_t> lengths{3, 12, 7};
  std::vector<std::vector<int64_t>> prompts;
  for (const int64_t n : lengths) prompts.emplace_back(f.prompt.end() - n, f.prompt.end());
  GenerationConfig c = greedy_config(12);
  auto single = [&](const std::vector<int64_t>& p) {
    const std::vector<int64_t> all = ints(generate(*f.model, ids_tensor(p), c));
    return std::vector<int64_t>(all.begin() + static_cast<int64_t>(p.size()), all.end());
  };
  // An eos that row 0 reaches by its fifth token: every row must stop at its own first eos.
  c.eos_token_id = {single(prompts[0])[4]};
  std::vector<std::vector<int64_t>> expected;
  for (const auto& p : prompts) expected.push_back(single(p));
  EXPECT_LE(expected[0].size(), 5u);

  std::vector<std::pair<int64_t, int64_t>> streamed;
  const auto rows = generate(*f.model, prompts, c,
                             [&](int64_t row, int64_t id) { streamed.emplace_back(row, id); });
  EXPECT_EQ(rows, expected);
  std::vector<std::vector<int64_t>> by_row(3);
  for (size_t i = 0; i < streamed.size(); ++i) {
    by_row[streamed[i].first].push_back(streamed[i].second);
    if (i > 0 && i < 3) {
      EXPECT_EQ(streamed[i].first, streamed[i - 1].first + 1);  // step 0
    }
  }
  EXPECT_EQ(by_row, expected);

  for (const bool left : {false, true}) {
    std::vector<int64_t> ids, mask;
    for (const auto& p : prompts) {
      const size_t n = p.size(), pad = 12 - n;
      std::vector<int64_t> row(pad, 5), row_mask(12, 0);
      row.insert(left ? row.end() : row.begin(), p.begin(), p.end());
      std::fill_n(row_mask.begin() + (left ? pad : 0), n, 1);
      ids.insert(ids.end(), row.begin(), row.end());
      mask.insert(mask.end(), row_mask.begin(), row_mask.end());
    }
    c.pad_token_id = -1;
    const Tensor out = generate(*f.model, Tensor::from_vector(ids, {3, 12}, DType::i64),
                                Tensor::from_vector(mask, {3, 12}, DType::i64), c);
    const std::vector<int64_t> all = ints(out);
    const int64_t width = out.size(1);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_EQ(std::vector<int64_t>(all.begin() + b * width, all.begin() + b * width + 12),
                std::vector<int64_t>(ids.begin() + b * 12, ids.begin() + (b + 1) * 12));
      std::vector<int64_t> tail(all.begin() + b * width + 12, all.begin() + (b + 1) * width);
      while (!tail.empty() && tail.back() == -1) tail.pop_back();
      EXPECT_EQ(tail, expected[b]) << "row " << b << (left ? " left" : " right") << " padded";
    }
  }
}

TEST(Generate, AttentionMaskErrors) {
  const Fixture f = load("llama_gqa");
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::i64);
  auto mask = [](std::vector<int64_t> m) { return Tensor::from_vector(m, {2, 3}, DType::i64); };
  const GenerationConfig c = greedy_config(2);
  const auto message = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message([&] { generate(*f.model, ids, mask({1, 0, 1, 1, 1, 1}), c); }).find("inside the prompt"),
            std::string::npos);
  EXPECT_NE(message([&] { generate(*f.model, ids, mask({1, 1, 1, 0, 0, 0}), c); }).find("row 1"),
            std::string::npos);
  EXPECT_NE(message([&] { generate(*f.model, ids, mask({1, 1, 1, 2, 1, 1}), c); }).find("0 or 1"),
            std::string::npos);
  EXPECT_NE(message([&] { generate(*f.model, ids, ids.narrow(1, 0, 2).contiguous(), c); }).find("shape"),
            std::string::npos);
  EXPECT_NE(message([&] { generate(*f.model, std::vector<std::vector<int64_t>>{{1, 2}, {}}, c); })
                .find("prompt 1"),
            std::string::npos);
}

TEST(Generate, ReusesAGivenCache) {
  const Fixture f = load("qwen3");
  KVCache cache = f.model->make_cache(64);
  for (int run = 0; run < 2; ++run) {  // the second run must not see the first one's positions
    const std::vector<int64_t> all =
        ints(generate(*f.model, ids_tensor(f.prompt), greedy_config(10), &cache));
    EXPECT_EQ(std::vector<int64_t>(all.begin() + f.prompt.size(), all.end()),
              std::vector<int64_t>(f.greedy.begin(), f.greedy.begin() + 10));
  }
}

TEST(Generate, Errors) {
  const Fixture f = load("llama_gqa");  // max_position_embeddings 256
  const Tensor prompt = ids_tensor(f.prompt);
  GenerationConfig c = greedy_config(256);
  EXPECT_THROW(generate(*f.model, prompt, c), Error);  // beyond the context
  KVCache small = f.model->make_cache(16);
  c.max_new_tokens = 8;
  EXPECT_THROW(generate(*f.model, prompt, c, &small), Error);  // beyond the cache
  KVCache two_rows = f.model->make_cache(64, 2);
  EXPECT_THROW(generate(*f.model, prompt, c, &two_rows), Error);
  EXPECT_THROW(generate(*f.model, ids_tensor({}), c), Error);
  auto bad = [&](auto edit) {
    GenerationConfig b;
    b.max_new_tokens = 4;
    edit(b);
    EXPECT_THROW(generate(*f.model, prompt, b), Error);
  };
  bad([](GenerationConfig& b) { b.temperature = -1.0f; });
  bad([](GenerationConfig& b) { b.top_p = 0.0f; });
  bad([](GenerationConfig& b) { b.top_p = 1.5f; });
  bad([](GenerationConfig& b) { b.top_k = -1; });
  bad([](GenerationConfig& b) { b.repetition_penalty = 0.0f; });
  bad([](GenerationConfig& b) { b.max_new_tokens = -1; });
}

// The CLI end to end: ids in, the fixture's greedy ids out, as one JSON object.
std::string run_command(const std::string& command, int* status) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return output;
  std::array<char, 4096> buffer;
  size_t got;
  while ((got = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), got);
  *status = pclose(pipe);
  return output;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (const int64_t id : ids) {
    if (!out.empty()) out += ',';
    out += std::to_string(id);
  }
  return out;
}

TEST(GenerateCli, GreedyIdsMatchTheFixture) {
  const Fixture f = load("llama_gqa");
  const std::string ids = join_ids(f.prompt);
  int status = -1;
  const std::string out =
      run_command(std::string(MARLIN_CLI_PATH) + " generate -m " + fixture_dir("llama_gqa") +
                      " --prompt-ids " + ids +
                      " -n 8 --temperature 0 --repetition-penalty 1 --json",
                  &status);
  ASSERT_EQ(status, 0) << out;
  const auto json = nlohmann::json::parse(out);
  EXPECT_EQ(json.at("ids").get<std::vector<int64_t>>(),
            std::vector<int64_t>(f.greedy.begin(), f.greedy.begin() + 8));
  EXPECT_GT(json.at("timings").at("tokens_per_s").get<double>(), 0.0);
}

TEST(GenerateCli, ScoreWritesTransformersLogits) {
  const Fixture f = load("llama_gqa");
  const std::string ids = join_ids(f.prompt);
  const std::string out_path = ::testing::TempDir() + "/marlin_score_logits.npy";
  int status = -1;
  const std::string out = run_command(std::string(MARLIN_CLI_PATH) + " score -m " +
                                          fixture_dir("llama_gqa") + " --prompt-ids " + ids +
                                          " --out " + out_path + " 2>&1",
                                      &status);
  ASSERT_EQ(status, 0) << out;
  const Tensor got = load_npy(out_path);
  const Tensor ref = load_npy(fixture_dir("llama_gqa") + "/logits.npy");
  ASSERT_EQ(got.dtype(), DType::f32);
  ASSERT_EQ(got.numel(), ref.numel());
  const std::vector<float> a = got.to_float_vector(), b = ref.to_float_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-4);
  std::remove(out_path.c_str());
}

TEST(GenerateCli, BadInputExitsNonZero) {
  const std::string cli = MARLIN_CLI_PATH;
  const std::string gqa = fixture_dir("llama_gqa");
  const std::vector<std::string> cases = {
      " generate -m /nonexistent/model --prompt-ids 1,2",
      " generate -m " + gqa + " --prompt-ids 1,2 -n 300",  // beyond the context of 256
      " generate -m " + gqa + " --prompt-ids 1,2 --bits 3",
      " generate -m " + gqa + " --prompt-ids 1,x",
      " generate -m " + gqa + " --prompt hello",  // no tokenizer.json
      " generate -m " + gqa + " --prompt-ids 1,2 --top-p 2",
      " score -m " + gqa + " --prompt-ids 1,2",  // no --out
  };
  for (const std::string& args : cases) {
    int status = 0;
    const std::string out = run_command(cli + args + " 2>&1", &status);
    EXPECT_NE(status, 0) << args << "\n" << out;
    // Ours say "error: [op] ..."; CLI11's own parse errors say what is missing.
    EXPECT_TRUE(out.find("error") != std::string::npos || out.find("required") != std::string::npos)
        << args << "\n" << out;
  }
}

}  // namespace
}  // namespace marlin
