// libFuzzer target for config.json and generation_config.json parsing: any input either fails
// with marlin::Error or gives a config whose per-layer tables match its layer count.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "marlin/error.h"
#include "marlin/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace marlin;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const ModelConfig c = parse_model_config(text, "fuzz/config.json");
    const auto layers = static_cast<size_t>(c.num_hidden_layers);
    if (c.head_dim <= 0 || c.rotary_dim <= 0 || c.num_key_value_heads <= 0 ||
        c.num_attention_heads % c.num_key_value_heads != 0 || c.moe_layers.size() != layers ||
        c.sliding_window_layers.size() != layers)
      std::abort();
    if (c.moe && (c.moe->num_experts_per_tok > c.moe->num_experts || c.moe->n_group <= 0))
      std::abort();
  } catch (const Error&) {
  }
  try {
    parse_generation_config(text, "fuzz/generation_config.json");
  } catch (const Error&) {
  }
  return 0;
}
