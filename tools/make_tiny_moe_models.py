#!/usr/bin/env python3
"""Builds the MoE fixtures of tests/fixtures/: tiny random-weight qwen3_moe (with and without
norm_topk_prob, one with a dense layer) and mixtral models with Transformers, each with a prompt,
Transformers' fp32 logits at every position and a 32-token greedy continuation (as
tools/make_tiny_models.py), and tests/fixtures/moe_routing/: Transformers' routers
(Qwen3-MoE, Mixtral, DeepSeek-V2 greedy and group_limited_greedy, DeepSeek-V3, GLM-4.7-Flash) on
random logits and on logits full of ties, with the experts and weights they chose.

Usage: python3 tools/make_tiny_moe_models.py [FIXTURES_DIR]   (default tests/fixtures)
Needs torch and transformers (CPU wheels are enough). Deterministic for a given torch version.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_models import COMMON, NEW_TOKENS, PROMPT_LEN, greedy  # noqa: E402

MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

MODELS = {
    # Renormalized top-2 of 8 experts; layer 0 is a dense MLP (mlp_only_layers).
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        MOE, num_experts=8, norm_topk_prob=True, mlp_only_layers=[0], num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False)),
    # Softmax weights used as they are.
    "qwen3_moe_nonorm": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        MOE, num_experts=8, norm_topk_prob=False, rope_theta=1000000.0,
        tie_word_embeddings=True)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
        num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, rope_theta=1000000.0,
        tie_word_embeddings=False)),
}


def make_models(out_dir):
    for index, (name, (config_cls, model_cls, extra)) in enumerate(MODELS.items()):
        torch.manual_seed(4321 + index)
        config = getattr(transformers, config_cls)(**{**COMMON, **extra})
        config._attn_implementation = "eager"
        model = getattr(transformers, model_cls)(config).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif pname.endswith("gate.weight"):
                    # Routers with clear preferences, so that fp32 rounding never flips a choice.
                    p.copy_(0.5 * torch.randn_like(p))
        path = os.path.join(out_dir, "models", name)
        model.save_pretrained(path, safe_serialization=True)
        reference = getattr(transformers, model_cls).from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
        gen = torch.Generator().manual_seed(77 + index)
        prompt = torch.randint(3, COMMON["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
        with torch.no_grad():
            logits = reference(torch.tensor([prompt])).logits[0].float().numpy()
        continuation, greedy_logits, margin = greedy(reference, prompt)
        np.save(os.path.join(path, "prompt_ids.npy"), np.array(prompt, dtype=np.int32))
        np.save(os.path.join(path, "logits.npy"), logits.astype(np.float32))
        np.save(os.path.join(path, "greedy_ids.npy"), np.array(continuation, dtype=np.int32))
        np.save(os.path.join(path, "greedy_logits.npy"), greedy_logits.astype(np.float32))
        with open(os.path.join(path, "reference.json"), "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "min_greedy_top2_margin": margin, "new_tokens": NEW_TOKENS}, f, indent=1)
        print(f"{name}: logits {logits.shape}, min greedy top-2 margin {margin:.4f}")


# Router cases: (Transformers module, config class, config fields). The router's hidden size is
# E and its weight the identity, so its logits are exactly the inputs we give it.
ROUTERS = {
    "qwen3_moe_norm_e64_k4": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeTopKRouter", dict(
        num_experts=64, num_experts_per_tok=4, norm_topk_prob=True)),
    "qwen3_moe_nonorm_e128_k8": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeTopKRouter", dict(
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=False)),
    # k * 64 <= E: torch.topk takes its partial_sort path.
    "qwen3_moe_norm_e64_k1": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeTopKRouter", dict(
        num_experts=64, num_experts_per_tok=1, norm_topk_prob=True)),
    "mixtral_e8_k2": ("mixtral", "MixtralConfig", "MixtralTopKRouter", dict(
        num_local_experts=8, num_experts_per_tok=2)),
    "deepseek_v2_greedy_e64_k6": ("deepseek_v2", "DeepseekV2Config", "DeepseekV2TopkRouter", dict(
        n_routed_experts=64, num_experts_per_tok=6, topk_method="greedy",
        routed_scaling_factor=16.0)),
    "deepseek_v2_group_e64_k6": ("deepseek_v2", "DeepseekV2Config", "DeepseekV2TopkRouter", dict(
        n_routed_experts=64, num_experts_per_tok=6, topk_method="group_limited_greedy", n_group=8,
        topk_group=3, routed_scaling_factor=16.0)),
    "deepseek_v3_e64_k6": ("deepseek_v3", "DeepseekV3Config", "DeepseekV3TopkRouter", dict(
        n_routed_experts=64, num_experts_per_tok=6, n_group=8, topk_group=4, norm_topk_prob=True,
        routed_scaling_factor=2.5)),
    "glm4_moe_lite_e64_k4": ("glm4_moe_lite", "Glm4MoeLiteConfig", "Glm4MoeLiteTopkRouter", dict(
        n_routed_experts=64, num_experts_per_tok=4, n_group=1, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=1.8)),
}

ROUTER_TOKENS = 160  # half random, half built from a few values (ties everywhere)


def router_inputs(E, seed, with_bias):
    gen = torch.Generator().manual_seed(seed)
    half = ROUTER_TOKENS // 2
    smooth = torch.randn(half, E, generator=gen) * 2.0
    ties = torch.randint(0, 4, (half, E), generator=gen).float() * 0.5
    ties[:4] = 1.0  # rows of one value
    logits = torch.cat([smooth, ties])
    bias = None
    if with_bias:
        # Applied to every token: the first half of tie rows see no bias effect on ties only
        # when the bias itself ties, so half the experts share a bias value.
        bias = torch.randint(0, 3, (E,), generator=gen).float() * 0.25
    return logits, bias


def make_routing(out_dir):
    root = os.path.join(out_dir, "moe_routing")
    os.makedirs(root, exist_ok=True)
    manifest = {}
    for index, (name, (model_type, config_cls, router_cls, fields)) in enumerate(ROUTERS.items()):
        E = fields.get("n_routed_experts", fields.get("num_experts", fields.get("num_local_experts")))
        config = getattr(transformers, config_cls)(hidden_size=E, **fields)
        module = getattr(transformers.models, model_type)
        router = getattr(getattr(module, f"modeling_{model_type}"), router_cls)(config).eval()
        with_bias = hasattr(router, "e_score_correction_bias")
        logits, bias = router_inputs(E, 1000 + index, with_bias)
        with torch.no_grad():
            router.weight.copy_(torch.eye(E))
            if with_bias:
                router.e_score_correction_bias.copy_(bias)
            router_logits, weights, ids = router(logits.clone())
        assert torch.equal(router_logits.float(), logits), name
        case = os.path.join(root, name)
        os.makedirs(case, exist_ok=True)
        np.save(os.path.join(case, "logits.npy"), logits.numpy().astype(np.float32))
        if with_bias:
            np.save(os.path.join(case, "bias.npy"), bias.numpy().astype(np.float32))
        np.save(os.path.join(case, "ids.npy"), ids.numpy().astype(np.int32))
        np.save(os.path.join(case, "weights.npy"), weights.float().numpy().astype(np.float32))
        # The config fields as a model's config.json would give them.
        manifest[name] = {"model_type": model_type, **{k: v for k, v in fields.items()},
                          "sorted": model_type in ("qwen3_moe", "mixtral")}
        print(f"routing {name}: E={E}, ids {tuple(ids.shape)}")
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "cases": manifest}, f, indent=1)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures")
    make_routing(out_dir)
    make_models(out_dir)


if __name__ == "__main__":
    main()
