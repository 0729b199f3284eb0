#!/usr/bin/env python3
"""Builds the tiny random-weight MLA models (glm4_moe_lite, deepseek_v3, deepseek_v2) of
tests/fixtures/models/ with Transformers, and stores for each a prompt, Transformers' fp32 logits
at every position and its 32-token greedy continuation with the logits of each step, as
tools/make_tiny_models.py does for the llama family: the references of tests/models/.

Usage: python3 tools/make_tiny_mla_models.py [OUT_DIR] [--dense]
  (default OUT_DIR tests/fixtures/models; --dense makes every layer a dense MLP, for running
  the attention without the MoE layers)
Needs torch and transformers (CPU wheels from PyPI are enough). Deterministic for a given
torch/transformers version: every model is built from a fixed seed.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from make_tiny_models import NEW_TOKENS, PROMPT_LEN, greedy  # noqa: E402

# Every head dim differs from the others (nope, rope, v) so a kernel that mixes them up fails;
# every linear's input size is a multiple of 32 so the quantized runs can use group size 32.
COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=256,
    max_position_embeddings=256,
    # Far from the 1e-6 that Transformers gives q_a_layernorm and kv_a_layernorm, so a model
    # that uses the config's eps there is caught.
    rms_norm_eps=1e-2,
    # Larger than the 0.02 default so the logits of a random model have clear top-1 margins.
    initializer_range=0.15,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    n_shared_experts=1,
    num_experts_per_tok=2,
)

MODELS = {
    # GLM-4.7-Flash's structure: q_lora, interleaved rope, sigmoid router with correction bias
    # (noaux_tc), one dense layer then MoE, Dn 24 / Dr 16 / Dv 32 (GLM: 192 / 64 / 256).
    "glm4_moe_lite": ("Glm4MoeLiteConfig", "Glm4MoeLiteForCausalLM", dict(
        q_lora_rank=32, kv_lora_rank=64, qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=8, n_group=1, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=1.8, rope_theta=1000000.0,
        mlp_layer_types=["dense", "sparse", "sparse"])),
    # Group-limited routing over 2 groups of 4 experts.
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=24,
        n_routed_experts=8, n_group=2, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=2.5, first_k_dense_replace=1, rope_theta=10000.0)),
    # DeepSeek-V2-Lite's structure: no q_lora (a plain q_proj), softmax greedy routing.
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=32,
        n_routed_experts=8, first_k_dense_replace=1, topk_method="greedy",
        routed_scaling_factor=1.0, rope_theta=10000.0)),
    # Yarn rope scaling with DeepSeek's mscale / mscale_all_dim (cos/sin and softmax scale
    # corrections), q_lora, group-limited softmax routing.
    "deepseek_v2_yarn": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        n_routed_experts=8, n_group=2, topk_group=1, first_k_dense_replace=1,
        topk_method="group_limited_greedy", routed_scaling_factor=1.5, rope_theta=10000.0,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64,
                          beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=0.8))),
}
TRIES = 12


def routing_margin(model, config, ids):
    """The smallest gap, over every MoE layer and token of `ids`, between the last chosen and the
    first unchosen expert's selection score (and between the groups at the topk_group border):
    a 16-bit run chooses Transformers' experts when rounding moves no score by this much."""
    margins = []

    def hook(module, args, output):
        logits = output[0].float()
        if getattr(module, "e_score_correction_bias", None) is not None:
            scores = logits.sigmoid() + module.e_score_correction_bias
            group = lambda s: s.topk(2, dim=-1)[0].sum(-1)
        else:
            scores = logits.softmax(-1)
            group = lambda s: s.max(-1).values
        top = scores.sort(-1, descending=True).values
        k = module.top_k
        margins.append(float((top[:, k - 1] - top[:, k]).min()))
        n_group = getattr(module, "num_group", 1) or 1
        if n_group > 1:
            g = group(scores.view(scores.shape[0], n_group, -1)).sort(-1, descending=True).values
            margins.append(float((g[:, module.topk_group - 1] - g[:, module.topk_group]).min()))

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if n.endswith("mlp.gate")]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return min(margins) if margins else float("inf")


def make_config(config_cls, extra, dense):
    kwargs = {**COMMON, **extra}
    if dense:
        layers = kwargs["num_hidden_layers"]
        if "mlp_layer_types" in kwargs:
            kwargs["mlp_layer_types"] = ["dense"] * layers
        else:
            kwargs["first_k_dense_replace"] = layers
    return getattr(transformers, config_cls)(**kwargs)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dense = "--dense" in sys.argv
    out_dir = args[0] if args else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "models")
    for index, (name, (config_cls, model_cls, extra)) in enumerate(MODELS.items()):
        # Of a few seeds, the model whose routing of its greedy sequence is the most decisive, so
        # that bf16 runs route every token as Transformers' fp32 run does.
        best = None
        for attempt in range(TRIES):
            torch.manual_seed(4321 + 100 * index + attempt)
            config = make_config(config_cls, extra, dense)
            config._attn_implementation = "eager"
            model = getattr(transformers, model_cls)(config).eval()
            # Random norm weights and router correction biases too (they initialise to ones and
            # zeros), so a layer that skips one is caught; routers with clear preferences.
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if "norm" in pname:
                        p.copy_(1.0 + 0.2 * torch.randn_like(p))
                    elif pname.endswith("mlp.gate.weight"):
                        p.copy_(0.5 * torch.randn_like(p))
                for bname, b in model.named_buffers():
                    if bname.endswith("e_score_correction_bias"):
                        b.copy_(0.1 * torch.randn_like(b))
            gen = torch.Generator().manual_seed(77 + index)
            prompt = torch.randint(3, COMMON["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
            continuation, _, token_margin = greedy(model, prompt)
            margin = min(routing_margin(model, config, prompt + continuation), 20 * token_margin)
            if best is None or margin > best[0]:
                best = (margin, attempt, model)
        margin, attempt, model = best
        print(f"{name}: seed attempt {attempt}, routing/token margin {margin:.4f}")
        path = os.path.join(out_dir, name)
        model.save_pretrained(path, safe_serialization=True)
        reference = getattr(transformers, model_cls).from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = reference(torch.tensor([prompt])).logits[0].float().numpy()
        continuation, greedy_logits, margin = greedy(reference, prompt)
        np.save(os.path.join(path, "prompt_ids.npy"), np.array(prompt, dtype=np.int32))
        np.save(os.path.join(path, "logits.npy"), logits.astype(np.float32))
        np.save(os.path.join(path, "greedy_ids.npy"), np.array(continuation, dtype=np.int32))
        np.save(os.path.join(path, "greedy_logits.npy"), greedy_logits.astype(np.float32))
        # Transformers' own bf16 run: where a rounding flips an expert choice its logits move far
        # beyond bf16's precision, which bounds what any bf16 run can match.
        bf16 = getattr(transformers, model_cls).from_pretrained(
            path, dtype=torch.bfloat16, attn_implementation="eager").eval()
        with torch.no_grad():
            bf16_logits = bf16(torch.tensor([prompt])).logits[0].float().numpy()
        bf16_error = float(np.linalg.norm(bf16_logits - logits) / np.linalg.norm(logits))
        with open(os.path.join(path, "reference.json"), "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "min_greedy_top2_margin": margin, "dense": dense,
                       "transformers_bf16_prefill_error": bf16_error,
                       "min_routing_margin": routing_margin(reference, reference.config,
                                                            prompt + continuation)}, f, indent=1)
        print(f"{name}: logits {logits.shape}, min greedy top-2 margin {margin:.4f}")
    assert NEW_TOKENS == 32


if __name__ == "__main__":
    main()
