#!/usr/bin/env python3
"""Trains the demo model of models/demo/: a byte-level BPE tokenizer and a small Llama on the
corpus of tools/build_demo_corpus.py, on one GPU, time-boxed, keeping the best held-out checkpoint.

  python3 tools/build_demo_corpus.py --out .corpus        # on a Debian machine with the packages
  python3 tools/train_demo_model.py --corpus .corpus --out OUT --time-budget 300   # on the GPU

Writes OUT/model/ (config.json, model.safetensors in bf16, tokenizer.json, tokenizer_config.json,
generation_config.json), loads it back with Transformers, prints a greedy sample and the final
held-out perplexity, and copies the held-out text (cut to about 200 KB at a document boundary)
to OUT/heldout.txt for tools/perplexity_reference.py and `marlin perplexity`.
"""
import argparse
import gzip
import json
import math
import os
import random
import time

import numpy as np
import torch

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3's pre-tokenizer split.
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def read_documents(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def train_tokenizer(texts, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, bos_id)])])
    return tok


def encode_stream(tok, texts):
    """Documents as one stream of ids: <|begin_of_text|> doc <|end_of_text|> ..."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.append(bos)
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def heldout_loss(model, windows, batch):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        x = windows[i:i + batch]
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def write_heldout_text(documents, path, max_bytes):
    kept, size = [], 0
    for text in documents:
        size += len(text.encode()) + 2
        if kept and size > max_bytes:
            break
        kept.append(text)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(kept) + "\n")
    return len(kept)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=".corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-budget", type=float, default=480, help="seconds of training")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768,
                    help="a multiple of 128, so that quantization groups of 128 divide every K")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--max-epochs", type=float, default=12, help="passes over the training tokens")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8, help="evals without a 0.2%% gain before stopping")
    ap.add_argument("--heldout-bytes", type=int, default=200_000)
    args = ap.parse_args()

    from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig,
                              LlamaForCausalLM, PreTrainedTokenizerFast)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: smoke tests only
    started = time.time()

    train_docs = read_documents(os.path.join(args.corpus, "train.jsonl.gz"))
    heldout_docs = read_documents(os.path.join(args.corpus, "heldout.jsonl.gz"))
    tok = train_tokenizer(train_docs, args.vocab)
    random.Random(args.seed).shuffle(train_docs)
    train_ids = encode_stream(tok, train_docs).to(device)
    heldout_ids = encode_stream(tok, heldout_docs)
    n_windows = heldout_ids.numel() // args.context
    heldout_windows = heldout_ids[:n_windows * args.context].view(n_windows, args.context).to(device)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {train_ids.numel() / 1e6:.2f} M train tokens, "
          f"{heldout_ids.numel() / 1e3:.1f} k held-out tokens "
          f"({sum(map(len, train_docs)) / train_ids.numel():.2f} chars/token), "
          f"{time.time() - started:.0f} s", flush=True)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate, max_position_embeddings=args.context,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
        attention_bias=False, mlp_bias=False, initializer_range=0.02)
    model = LlamaForCausalLM(config).to(device)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
          f"{args.kv_heads} kv heads, intermediate {args.intermediate}, context {args.context}, "
          f"{n_params / 1e6:.2f} M parameters (tied embeddings)", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    tokens_per_step = args.batch * args.context
    max_steps = int(args.max_epochs * train_ids.numel() / tokens_per_step)
    total_steps = max_steps  # shortened below once the step time is known
    generator = torch.Generator(device=device).manual_seed(args.seed)
    offsets_range = train_ids.numel() - args.context

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    best_loss, best_step, best_state, evals_without_gain = float("inf"), -1, None, 0
    train_start = time.time()
    step, loss_sum, reason = 0, 0.0, "max epochs"
    model.train()
    while step < total_steps:
        if time.time() - train_start > args.time_budget:
            reason = "time budget"
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, offsets_range, (args.batch,), device=device, generator=generator)
        x = train_ids[starts[:, None] + torch.arange(args.context, device=device)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        step += 1
        if step == 50:
            # Fit the cosine schedule into the time budget (evals cost about 5%).
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - train_start) / step
            total_steps = min(max_steps, int(0.95 * args.time_budget / per_step))
            print(f"{per_step * 1e3:.1f} ms/step, {tokens_per_step / per_step / 1e3:.0f} k tokens/s: "
                  f"{total_steps} steps ({total_steps * tokens_per_step / train_ids.numel():.1f} "
                  f"epochs)", flush=True)
        if step % args.eval_every == 0 or step == total_steps:
            val = heldout_loss(model, heldout_windows, 64)
            train_loss = loss_sum.item() / args.eval_every
            loss_sum = 0.0
            print(f"step {step:6d}  epoch {step * tokens_per_step / train_ids.numel():5.2f}  "
                  f"lr {lr_at(step):.2e}  train {train_loss:.4f}  held-out {val:.4f} "
                  f"(ppl {math.exp(val):.2f})  {time.time() - train_start:.0f} s", flush=True)
            if val < best_loss * 0.998:
                evals_without_gain = 0
            else:
                evals_without_gain += 1
            if val < best_loss:
                best_loss, best_step = val, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if evals_without_gain >= args.patience:
                reason = "held-out loss stopped improving"
                break
    if best_state is None:
        best_state, best_step = model.state_dict(), step
        best_loss = heldout_loss(model, heldout_windows, 64)
    train_time = time.time() - train_start
    print(f"stopped at step {step} ({reason}) after {train_time:.0f} s; best held-out loss "
          f"{best_loss:.4f} at step {best_step}", flush=True)

    model.load_state_dict(best_state)
    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    model.config.use_cache = True
    model.to(torch.bfloat16).save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id,
                     eos_token_id=[config.eos_token_id, tok.token_to_id("<|eot_id|>")],
                     do_sample=True, temperature=0.8, top_p=0.95).save_pretrained(model_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   model_max_length=args.context, chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(model_dir)
    # tokenizer_config.json already names bos and eos; fewer files to ship (and to bring back).
    if os.path.exists(os.path.join(model_dir, "special_tokens_map.json")):
        os.remove(os.path.join(model_dir, "special_tokens_map.json"))
    kept = write_heldout_text(heldout_docs, os.path.join(args.out, "heldout.txt"),
                              args.heldout_bytes)

    # The directory must load as is.
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    loaded_tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        nll_sum = 0.0
        for i in range(0, heldout_windows.shape[0], 32):
            x = heldout_windows[i:i + 32]
            logits = loaded(input_ids=x).logits
            nll_sum += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                reduction="sum").item()
        nll = torch.tensor(nll_sum / (heldout_windows.shape[0] * (args.context - 1)))
    print(f"loaded back: {type(loaded).__name__}, {type(loaded_tok).__name__}, "
          f"files {sorted(os.listdir(model_dir))}")
    for prompt in ("In the beginning", "The Python interpreter", "A hacker is"):
        ids = loaded_tok(prompt, return_tensors="pt").input_ids.to(device)
        out = loaded.generate(ids, max_new_tokens=48, do_sample=False)
        print(f"greedy: {loaded_tok.decode(out[0], skip_special_tokens=True)!r}")
    chat = loaded_tok.apply_chat_template([{"role": "user", "content": "Hello"}],
                                          add_generation_prompt=True, tokenize=False)
    print(f"chat template: {chat!r}")
    print(f"held-out text: {kept} of {len(heldout_docs)} documents in heldout.txt")
    print(f"final held-out perplexity: {math.exp(nll.item()):.3f} (fp32 reload of the bf16 "
          f"weights, {heldout_windows.numel()} tokens in windows of {args.context}); "
          f"bf16 autocast during training: {math.exp(best_loss):.3f}; "
          f"total time {time.time() - started:.0f} s on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")


if __name__ == "__main__":
    main()
