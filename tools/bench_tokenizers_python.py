#!/usr/bin/env python3
"""Encode throughput of the Hugging Face `tokenizers` library on one thread, the baseline that
`marlin bench tokenize` is compared with (docs/TOKENIZER.md).

Usage: RAYON_NUM_THREADS=1 python3 tools/bench_tokenizers_python.py MODEL_DIR TEXT_FILE [ITERS]
"""
import os
import re
import statistics
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402


def main():
    model_dir, text_file = sys.argv[1], sys.argv[2]
    iters = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(text_file, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    tok.encode(text, add_special_tokens=False)  # warm-up, fills the word cache
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        n = len(tok.encode(text, add_special_tokens=False).ids)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    print(f"tokenizers {__import__('tokenizers').__version__}: {len(raw) / 1e6:.2f} MB, {n} tokens, "
          f"whole text: median {t * 1e3:.1f} ms over {iters} runs = {len(raw) / 1e6 / t:.2f} MB/s")
    # Line by line through encode_batch (one Rayon thread), as `marlin bench tokenize` does.
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # split at '\n' only, as the C++ bench
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        tok.encode_batch(lines, add_special_tokens=False)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    print(f"line by line ({len(lines)} lines): median {t * 1e3:.1f} ms = {len(raw) / 1e6 / t:.2f} MB/s")


if __name__ == "__main__":
    main()
