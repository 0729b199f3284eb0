#!/usr/bin/env python3
"""Builds the tiny random-weight llama-family models of tests/fixtures/models/ with Transformers,
and stores for each a prompt, Transformers' fp32 logits at every position and its 32-token greedy
continuation with the logits of each step: the references of tests/models/.

Usage: python3 tools/make_tiny_models.py [OUT_DIR]   (default tests/fixtures/models)
Needs torch and transformers (CPU wheels from PyPI are enough). Deterministic for a given
torch/transformers version: every model is built from a fixed seed.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers

# head_dim 64 everywhere: the attention kernels take head_dim 64/80/96/128/256, so the small
# hidden size gets its heads through an explicit head_dim (not hidden / heads).
COMMON = dict(
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    # Larger than the 0.02 default so the logits of a random model have clear top-1 margins and
    # greedy decoding is not decided by rounding noise.
    initializer_range=0.15,
    bos_token_id=1,
    eos_token_id=2,
)

MODELS = {
    # GQA (2 query heads share 1 kv head) with llama3 rope scaling.
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=10000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32),
        tie_word_embeddings=False), "float32"),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True), "float32"),
    # A window shorter than prompt + continuation, so decoding crosses it.
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        sliding_window=8, rope_theta=10000.0, tie_word_embeddings=False), "float32"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_theta=1000000.0, tie_word_embeddings=False), "float32"),
    # Checkpoint stored in bf16: its references come from the bf16 weights run in fp32.
    "qwen2_bf16": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_theta=1000000.0, tie_word_embeddings=True), "bfloat16"),
    # Per-head q/k RMSNorm; head_dim 64 with 4 heads, hidden 64.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
        tie_word_embeddings=True), "float32"),
}

PROMPT_LEN = 12
NEW_TOKENS = 32


def greedy(model, ids):
    """Greedy continuation by full forwards (no cache): what the C++ cache path must match."""
    seq = list(ids)
    margins, rows = [], []
    for _ in range(NEW_TOKENS):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top2 = torch.topk(logits, 2).values
        margins.append(float(top2[0] - top2[1]))
        rows.append(logits.float().numpy())
        seq.append(int(torch.argmax(logits)))
    return seq[len(ids):], np.stack(rows), min(margins)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "models")
    for index, (name, (config_cls, model_cls, extra, dtype)) in enumerate(MODELS.items()):
        torch.manual_seed(1234 + index)
        config = getattr(transformers, config_cls)(**{**COMMON, **extra})
        config._attn_implementation = "eager"
        model = getattr(transformers, model_cls)(config).eval()
        # Random norm weights too (they initialise to ones), so a layer that skips one is caught.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname or pname.endswith("bias"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in pname
                            else 0.1 * torch.randn_like(p))
        model = model.to(getattr(torch, dtype))
        path = os.path.join(out_dir, name)
        model.save_pretrained(path, safe_serialization=True)
        # The reference is the saved checkpoint loaded in fp32, as a user would run it (casting
        # the bf16 model with .float() would keep its bf16-rounded rotary inv_freq buffer).
        reference = getattr(transformers, model_cls).from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
        gen = torch.Generator().manual_seed(99 + index)
        prompt = torch.randint(3, COMMON["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
        with torch.no_grad():
            logits = reference(torch.tensor([prompt])).logits[0].float().numpy()
        continuation, greedy_logits, margin = greedy(reference, prompt)
        np.save(os.path.join(path, "prompt_ids.npy"), np.array(prompt, dtype=np.int32))
        np.save(os.path.join(path, "logits.npy"), logits.astype(np.float32))
        np.save(os.path.join(path, "greedy_ids.npy"), np.array(continuation, dtype=np.int32))
        # The logits that chose each greedy token: 16-bit runs may pick another token only where
        # these have a near tie.
        np.save(os.path.join(path, "greedy_logits.npy"), greedy_logits.astype(np.float32))
        with open(os.path.join(path, "reference.json"), "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "min_greedy_top2_margin": margin}, f, indent=1)
        print(f"{name}: logits {logits.shape}, min greedy top-2 margin {margin:.4f}")


if __name__ == "__main__":
    main()
