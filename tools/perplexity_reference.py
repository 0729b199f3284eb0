#!/usr/bin/env python3
"""Transformers' perplexity of a causal LM on a text file: the reference that `marlin perplexity`
must match (tests/fixtures/demo_perplexity.json holds it for models/demo on its held-out text).

Method: Hugging Face's strided perplexity ("Perplexity of fixed-length models" in the
Transformers docs). The whole file is tokenized once with the tokenizer's special tokens (for
models/demo that is one <|begin_of_text|> at the very start, none elsewhere). Windows of
`context` tokens start every `stride` tokens, the last one ending at the last token; in each
window only the tokens not scored by an earlier window are scored (the window's first token never
is, having no left context). With the default stride == context the windows do not overlap, so
each window of N tokens scores its last N - 1. perplexity = exp(sum of NLL / tokens scored),
computed in fp32.

  python3 tools/perplexity_reference.py --model models/demo --file models/demo/heldout.txt \
      --prefix-lines 150 --device cpu --json tests/fixtures/demo_perplexity.json

--prefix-lines N also scores the file's first N lines (what `head -n N` keeps) and stores that
under "prefix": tests/models/perplexity_test.cpp checks it, so that the unit test runs in seconds.
"""
import argparse
import json
import math
import time

import torch


def strided_perplexity(model, ids, context, stride, device):
    """Returns (perplexity, tokens scored, summed NLL) of ids [1, T] by the strided method."""
    total_nll, scored, prev_end = 0.0, 0, 0
    length = ids.shape[1]
    for begin in range(0, length, stride):
        end = min(begin + context, length)
        new = end - prev_end  # tokens of this window not yet scored
        x = ids[:, begin:end].to(device)
        with torch.no_grad():
            logits = model(input_ids=x).logits.float()
        targets = x[:, 1:].clone()
        already = targets.shape[1] - new  # none when stride == context
        if already > 0:
            targets[:, :already] = -100
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
            ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        scored += int((targets != -100).sum())
        prev_end = end
        if end == length:
            break
    return math.exp(total_nll / scored), scored, total_nll


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--file", required=True, help="UTF-8 text")
    ap.add_argument("--context", type=int, default=0, help="window (default: the model's context)")
    ap.add_argument("--stride", type=int, default=0, help="default: the window, i.e. no overlap")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prefix-lines", type=int, default=0,
                    help="also score the first N lines (stored under 'prefix' in the JSON)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = model.to(args.device).eval()
    context = args.context or model.config.max_position_embeddings
    stride = args.stride or context
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text, return_tensors="pt").input_ids
    started = time.time()
    ppl, scored, nll = strided_perplexity(model, ids, context, stride, args.device)
    seconds = time.time() - started
    result = {
        "value": round(ppl, 6), "nll_sum": round(nll, 4), "tokens": scored,
        "text_tokens": ids.shape[1], "context": context, "stride": stride,
        "method": "Transformers strided perplexity (HF docs 'Perplexity of fixed-length models'); "
                  "stride == context means non-overlapping windows, each scoring all its tokens "
                  "but the first; the text is tokenized once with one <|begin_of_text|> at its start",
        "dtype": "float32", "first_ids": ids[0, :8].tolist(),
        "model": "models/demo", "file": "models/demo/heldout.txt",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    print(f"perplexity {ppl:.4f} over {scored} tokens (context {context}, stride {stride}), "
          f"{scored / seconds:.0f} tokens/s on {result['device']}")
    if args.prefix_lines:
        # Cut after the N-th "\n", as `head -n` does (str.splitlines would also cut at \r, \f,
        # U+2028, ...).
        end = 0
        for _ in range(args.prefix_lines):
            end = text.find("\n", end) + 1
            if end == 0:
                end = len(text)
                break
        prefix_text = text[:end]
        prefix_ids = tok(prefix_text, return_tensors="pt").input_ids
        p_ppl, p_scored, p_nll = strided_perplexity(model, prefix_ids, context, stride, args.device)
        result["prefix"] = {
            "lines": args.prefix_lines, "value": round(p_ppl, 6), "nll_sum": round(p_nll, 4),
            "tokens": p_scored, "text_tokens": prefix_ids.shape[1], "context": context,
            "stride": stride, "device": result["device"],
            "note": f"the first {args.prefix_lines} lines of the file (what `head -n "
                    f"{args.prefix_lines}` keeps), for a unit test that runs in seconds"}
        print(f"first {args.prefix_lines} lines: perplexity {p_ppl:.4f} over {p_scored} tokens")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
