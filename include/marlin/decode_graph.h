// DecodeGraph: the decode step of a CausalLM on CUDA (one token for every row of a KVCache)
// captured once as a CUDA graph and replayed, so a step costs one graph launch instead of a few
// hundred kernel launches from the host. generate uses it on CUDA (GenerationConfig::cuda_graph).
//
//   DecodeGraph graph(model, cache);           // after the prompt is in the cache
//   StreamGuard guard(graph.stream());          // what reads the logits runs on its stream
//   const Tensor& logits = graph.step(ids);     // [B, 1, V] f32 on the device
//
// The step reads every value that changes from device buffers whose addresses never change
// (docs/GENERATION.md): the ids from a persistent [B, 1] buffer that step() fills, positions and
// attention lengths from the cache's lengths. The first step runs eagerly, which also leaves
// every buffer the step needs in the caching allocator; the second captures the step (no kernel
// runs while capturing) into a private allocator pool that keeps its buffers for the graph's
// lifetime (CudaCachingAllocator::begin_capture), then every step replays it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "marlin/kv_cache.h"
#include "marlin/model.h"
#include "marlin/stream.h"
#include "marlin/tensor.h"

namespace marlin {

class DecodeGraph {
 public:
  // True when `model` is on CUDA and its decode step can be captured
  // (CausalLM::decode_graph_capturable), in a build with the CUDA backend.
  static bool supported(const CausalLM& model);

  // `cache` must be the model's, on its device; it stays in use by the graph (and must outlive
  // it). Nothing runs yet: waits for the work queued on the caller's current stream of the
  // device (a prefill), then makes the graph's own stream (the legacy default stream cannot be
  // captured). Run the steps, and whatever reads their logits, under StreamGuard(stream()), or
  // synchronize stream() before using them elsewhere.
  DecodeGraph(const CausalLM& model, KVCache& cache);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  // One step: ids[b] is row b's next token (checked against the vocabulary here, since the
  // captured embedding cannot report bad ids). Returns the step's logits f32 [B, 1, V] on the
  // device, ready in order on stream(). From the second step on it is the same tensor every
  // time, overwritten by the next step. A row that would pass the cache's max_seq_len or the
  // model's context is an error before anything runs.
  const Tensor& step(const std::vector<int64_t>& ids);

  const Stream& stream() const;
  int64_t steps() const;          // steps run so far
  bool captured() const;          // the graph exists (from the second step on)
  double capture_ms() const;      // host time the capture and instantiation took
  // Replays do not move the cache's host mirror (row_lengths(), seq_len()): this reads the
  // device lengths back (one small copy and a wait). The destructor does it too.
  void sync_cache();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace marlin
