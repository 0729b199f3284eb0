// DecodeGraph: eager first step, capture on the second, replays after (decode_graph.h).
#include "marlin/decode_graph.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "core/cuda_check.h"
#include "marlin/error.h"
#ifdef MARLIN_WITH_CUDA
#include "core/cuda_graph.h"
#endif

namespace marlin {

constexpr const char* kOp = "DecodeGraph";

struct DecodeGraph::Impl {
  const CausalLM& model;
  KVCache& cache;
  int device = 0;
  Stream stream;
  Tensor ids;            // i32 [B, 1] on the device: what the captured embedding reads
  Tensor logits;         // the captured step's output, rewritten by every replay
  Tensor eager_logits;   // the first step's
  std::vector<int32_t> host_ids;
  // The cache's lengths when the graph was captured (the host mirror then), and the replays
  // since: what the host mirror would say, for the room checks replays cannot make.
  std::vector<int64_t> base_lengths;
  int64_t replays = 0, steps = 0;
  double capture_ms = 0;
#ifdef MARLIN_WITH_CUDA
  CapturedGraph graph;
#endif

  Impl(const CausalLM& m, KVCache& c) : model(m), cache(c) {}
  void check_room() const;
  void copy_ids(const std::vector<int64_t>& values);
  void capture();
};

bool DecodeGraph::supported(const CausalLM& model) {
#ifdef MARLIN_WITH_CUDA
  return model.device().is_cuda() && model.decode_graph_capturable();
#else
  (void)model;
  return false;
#endif
}

DecodeGraph::DecodeGraph(const CausalLM& model, KVCache& cache)
    : impl_(std::make_unique<Impl>(model, cache)) {
  MARLIN_CHECK(supported(model), kOp, "the model's decode step cannot be captured as a CUDA graph (",
               model.device().str(), ", ", model.config().source,
               "): run its steps eagerly (GenerationConfig::cuda_graph = false)");
  MARLIN_CHECK(cache.device() == model.device() && cache.config().num_layers == model.config().num_hidden_layers,
               kOp, "the cache was not made for this model (use make_cache)");
  Impl& im = *impl_;
  im.device = model.device().index;
  // The prefill, and every block freed on the caller's stream, are done before this stream
  // (which does not wait for the legacy default stream) reuses anything.
  current_stream(im.device).synchronize();
  im.stream = Stream::create(im.device);
  StreamGuard guard(im.stream);
  im.ids = Tensor::zeros({cache.batch_size(), 1}, DType::i32, model.device());
}

DecodeGraph::~DecodeGraph() {
  Impl& im = *impl_;
  try {
    sync_cache();
  } catch (const Error&) {
    // A failed device: nothing more to read back.
  }
#ifdef MARLIN_WITH_CUDA
  if (im.stream.handle) cudaStreamSynchronize(static_cast<cudaStream_t>(im.stream.handle));
  im.graph.reset();  // waits for the last replay, then gives the pool back
#endif
  {
    StreamGuard guard(im.stream);
    im.logits = Tensor();
    im.eager_logits = Tensor();
    im.ids = Tensor();
  }
  im.stream.destroy();
}

const Stream& DecodeGraph::stream() const { return impl_->stream; }
int64_t DecodeGraph::steps() const { return impl_->steps; }
double DecodeGraph::capture_ms() const { return impl_->capture_ms; }

bool DecodeGraph::captured() const {
#ifdef MARLIN_WITH_CUDA
  return impl_->graph.defined();
#else
  return false;
#endif
}

void DecodeGraph::Impl::check_room() const {
  const std::vector<int64_t>& now = base_lengths.empty() ? cache.row_lengths() : base_lengths;
  const int64_t context = model.config().max_position_embeddings;
  for (size_t b = 0; b < now.size(); ++b) {
    const int64_t end = now[b] + (base_lengths.empty() ? 0 : replays) + 1;
    MARLIN_CHECK(end <= cache.config().max_seq_len, kOp, "row ", b, ": a step at position ", end - 1,
                 " passes the cache's max_seq_len=", cache.config().max_seq_len);
    MARLIN_CHECK(context <= 0 || end <= context, kOp, "row ", b, ": positions up to ", end,
                 " exceed the model's context of ", context, " tokens (max_position_embeddings in ",
                 model.config().source, ")");
  }
}

void DecodeGraph::Impl::copy_ids(const std::vector<int64_t>& values) {
  const int64_t B = cache.batch_size(), V = model.config().vocab_size;
  MARLIN_CHECK(static_cast<int64_t>(values.size()) == B, kOp, "one id per row: ", B, " rows, got ",
               values.size(), " ids");
  host_ids.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = values[static_cast<size_t>(b)];
    MARLIN_CHECK(id >= 0 && id < V, kOp, "id ", id, " of row ", b,
                 " is outside the vocabulary [0, V=", V, ")");
    host_ids[static_cast<size_t>(b)] = static_cast<int32_t>(id);
  }
#ifdef MARLIN_WITH_CUDA
  // From pageable memory the copy is staged before cudaMemcpyAsync returns, so host_ids can be
  // rewritten at the next step; it is ordered before the launch that reads it.
  MARLIN_CUDA_CHECK(cudaMemcpyAsync(ids.data_ptr(), host_ids.data(), host_ids.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream.handle)),
                    kOp);
#endif
}

void DecodeGraph::Impl::capture() {
#ifdef MARLIN_WITH_CUDA
  const auto start = std::chrono::steady_clock::now();
  try {
    graph = CapturedGraph::capture(static_cast<cudaStream_t>(stream.handle), device,
                                   [&] { logits = model.forward(ids, &cache); }, kOp);
  } catch (...) {
    // The capture ran the step's host code (the cache's mirror moved) but no kernel.
    logits = Tensor();
    cache.refresh_host_lengths();
    throw;
  }
  cache.refresh_host_lengths();
  base_lengths = cache.row_lengths();
  replays = 0;
  eager_logits = Tensor();
  capture_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
#endif
}

const Tensor& DecodeGraph::step(const std::vector<int64_t>& ids) {
  Impl& im = *impl_;
  MARLIN_CHECK(im.cache.step_tokens() == 0, kOp, "the cache has a step of ", im.cache.step_tokens(),
               " tokens in flight");
  im.check_room();
  StreamGuard guard(im.stream);
  im.copy_ids(ids);
  if (im.steps == 0) {
    // Eager: warms the allocator, so the capture finds every buffer cached.
    im.eager_logits = im.model.forward(im.ids, &im.cache);
    ++im.steps;
    return im.eager_logits;
  }
#ifdef MARLIN_WITH_CUDA
  if (!im.graph.defined()) im.capture();
  im.graph.launch(kOp);
  ++im.replays;
  ++im.steps;
  return im.logits;
#else
  fail_no_cuda(kOp);
#endif
}

void DecodeGraph::sync_cache() {
  Impl& im = *impl_;
  if (im.replays == 0) return;
  StreamGuard guard(im.stream);
  im.cache.refresh_host_lengths();
  im.base_lengths = im.cache.row_lengths();
  im.replays = 0;
}

}  // namespace marlin
