#!/usr/bin/env python3
"""Rotary-embedding fixtures from Hugging Face Transformers, for tests/kernels/rope_fixture_test.cpp.

For each case: a config.json dict (real values from bench/configs where there is one), the
inverse frequencies and attention scaling of the model's rotary embedding class, and one f32
tensor [tokens, heads, rotary_dim] before and after apply_rotary_pos_emb(_interleave).

    pip install torch transformers   # CPU wheels suffice
    python tools/make_rope_fixtures.py            # writes tests/fixtures/rope/*.json
"""
import importlib
import json
import pathlib

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "rope"


def bench(name):
    return json.loads((ROOT / "bench" / "configs" / name).read_text())


def small(config, **extra):
    """Keeps the fields that decide RoPE, shrinks the rest (the fixture stores the whole dict)."""
    keep = {k: v for k, v in config.items() if k in (
        "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings",
        "partial_rotary_factor", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
        "kv_lora_rank", "q_lora_rank", "rope_interleave", "architectures",
        "n_routed_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
        "n_shared_experts", "n_group", "topk_group")}
    keep.update(vocab_size=128, intermediate_size=64, num_hidden_layers=1)
    keep.update(extra)
    return keep


def cases():
    llama_linear = {"model_type": "llama", "hidden_size": 640, "num_attention_heads": 8,
                    "num_key_value_heads": 2, "rope_theta": 10000.0, "max_position_embeddings": 8192,
                    "vocab_size": 128, "intermediate_size": 64, "num_hidden_layers": 1,
                    "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    qwen2_yarn = {"model_type": "qwen2", "hidden_size": 768, "num_attention_heads": 8,
                  "num_key_value_heads": 2, "rope_theta": 1000000.0, "max_position_embeddings": 131072,
                  "vocab_size": 128, "intermediate_size": 64, "num_hidden_layers": 1,
                  "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    # DeepSeek-V3's rope block, with mscale != mscale_all_dim to exercise the ratio.
    deepseek_yarn = {"model_type": "deepseek_v3", "hidden_size": 512, "num_attention_heads": 4,
                     "num_key_value_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 32,
                     "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
                     "rope_theta": 10000, "max_position_embeddings": 163840, "n_routed_experts": 8, "n_group": 1, "topk_group": 1,
                     "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                     "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}}
    return {
        "qwen3_8b_default": small(bench("qwen3-8b.json")),
        "llama31_8b_llama3": small(bench("llama-3.1-8b.json")),
        "llama32_1b_llama3": small(bench("llama-3.2-1b.json")),
        "llama_linear_hd80": llama_linear,
        "qwen2_yarn": qwen2_yarn,
        "deepseek_v3_yarn_interleave": small(deepseek_yarn),
        "glm47_flash_interleave": small(bench("glm-4.7-flash.json")),
    }


def rotary_class(model_type):
    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    prefix = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama", "deepseek_v3": "DeepseekV3",
              "glm4_moe_lite": "Glm4MoeLite"}[model_type]
    return mod, getattr(mod, f"{prefix}RotaryEmbedding")


def make(name, cfg_dict, seed):
    config = transformers.AutoConfig.for_model(**cfg_dict)
    mod, cls = rotary_class(cfg_dict["model_type"])
    rope = cls(config)
    inv_freq = rope.inv_freq.float()
    dim = 2 * inv_freq.numel()
    interleave = bool(getattr(config, "rope_interleave", False))
    heads = 2
    positions = torch.tensor([0, 7, 4097, 65535, 131071], dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, heads, positions.numel(), dim, generator=g, dtype=torch.float32)
    cos, sin = rope(x, positions[None])
    apply = mod.apply_rotary_pos_emb_interleave if interleave else mod.apply_rotary_pos_emb
    rotated, _ = apply(x, x, cos, sin)
    to_list = lambda t: t[0].transpose(0, 1).contiguous().flatten().tolist()  # [tokens, heads, dim]
    return {
        "name": name,
        "transformers_version": transformers.__version__,
        "config": cfg_dict,
        "rotary_dim": dim,
        "interleave": interleave,
        "inv_freq": inv_freq.tolist(),
        "attention_scaling": float(rope.attention_scaling),
        "positions": positions.tolist(),
        "shape": [positions.numel(), heads, dim],
        "x": to_list(x),
        "rotated": to_list(rotated),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, cfg) in enumerate(cases().items()):
        fixture = make(name, cfg, seed=i + 1)
        (OUT / f"{name}.json").write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
        print(f"{name}: rotary_dim={fixture['rotary_dim']} attention_scaling={fixture['attention_scaling']}")


if __name__ == "__main__":
    main()
