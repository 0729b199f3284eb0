#!/usr/bin/env python3
"""Tokenizer fixtures for tests/io/tokenizer_*_test.cpp, all produced by the Hugging Face
`tokenizers` library (written with tokenizers==0.23.3; pip install tokenizers==0.23.3).

1. Trains two small tokenizers on a corpus built here and saves them under
   tests/fixtures/tokenizers/<name>/ (tokenizer.json + tokenizer_config.json):
     llama3_bpe     byte-level BPE, Llama-3 Split regex, ignore_merges, merges as [a, b] pairs,
                    added tokens with lstrip/rstrip/single_word/normalized, TemplateProcessing bos
     sp_bpe         SentencePiece-style BPE with byte_fallback: Prepend("▁") + Replace(" ", "▁")
                    normalizers, Replace/ByteFallback/Fuse/Strip decoders, merges as "a b" strings
     sp_metaspace   the same model behind NFKC + a Metaspace pre-tokenizer (prepend_scheme first)
                    and ByteFallback + Metaspace decoders
2. Writes tests/fixtures/tokenizers/expected_<name>.json for those and for the real Qwen3 and
   DeepSeek-V3 tokenizers in ../shared/tokenizers (skipped when absent): for every text of a varied
   corpus the ids without and with special tokens, the decoded strings, and ids for invalid UTF-8.
3. Writes tests/fixtures/tokenizers/expected_components.json: the pieces of each pre-tokenizer
   (every Split behaviour, inverted or not, ByteLevel, Metaspace, Digits, ...) and the output of
   each normalizer on sample texts.

With-special-token ids follow the rule of Marlin's Tokenizer: when tokenizer_config.json sets
add_bos_token / add_eos_token, those decide (as Transformers' Llama tokenizers and llama.cpp do);
otherwise the tokenizer.json post_processor decides (what `tokenizers` itself does).

Usage: python3 tools/make_tokenizer_fixtures.py   (from the repository root)
"""
import json
import os
import random
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
SHARED = os.path.join(ROOT, "..", "shared", "tokenizers")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

PROSE = """The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst
of times, it was the age of wisdom, it was the age of foolishness. In the beginning the Universe
was created. This has made a lot of people very angry and been widely regarded as a bad move.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my
purse, and nothing particular to interest me on shore, I thought I would sail about a little and
see the watery part of the world. We're sure they'll say it's fine; you've done what I'd do.
Quantized inference runs large language models with four-bit weights on graphics processors.
"""

CODE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

int main(int argc, char** argv) {
\tstd::vector<int> values{1, 2, 3};
\tfor (auto& v : values) v *= 2;  // double them
\treturn values.size() > 2 ? 0 : 1;
}
{"key": "value", "list": [1, 2.5, -3e10], "nested": {"ok": true, "none": null}}
'''

MULTILINGUAL = """Café naïve résumé façade jalapeño Ångström Übermäßig straße.
Привет, как дела? Γειά σου Κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया.
你好，世界！今天天气很好。我们一起去公园散步吧。こんにちは、世界。カタカナとひらがな。
안녕하세요 세계. Xin chào thế giới. 👍 😀 🎉 🚀 ❤️
"""


def training_corpus():
    rng = random.Random(1234)
    lines = (PROSE + CODE + MULTILINGUAL).splitlines()
    corpus = []
    for i in range(300):
        line = rng.choice(lines)
        corpus.append(line)
        corpus.append(" ".join(rng.sample(line.split() or ["x"], k=min(5, len(line.split() or ["x"])))))
        corpus.append(str(rng.randint(0, 10 ** rng.randint(1, 12))) + " items at $" +
                      f"{rng.random() * 1000:.2f}")
    return corpus


def texts_for(special_tokens):
    """The varied corpus every tokenizer is checked on."""
    texts = [
        "", " ", "Hello", "Hello world", " Hello world", "  leading spaces", "trailing spaces   ",
        "a  b   c    d", "line one\nline two\n\nline four\n\n\n", "\n", "\n\n", "\r\n", " \n ",
        "tabs\tand\t\ttabs", "\t\tindented", "mixed \t \n \r\n whitespace", "   \n\n   end",
        "I'm sure they'll say it's fine, WE'RE done, you've, I'd, she's, DON'T.",
        "“Curly quotes” — dashes… ‘single’ «guillemets»", "(parenthesis) [brackets] {braces}",
        "Email: someone@example.com, URL: https://example.org/a/b?c=d&e=f#g",
        "Ünïcödé ÀÉÎÕÜ àéîõü", "cafe\u0301 nai\u0308ve re\u0301sume\u0301", "café naïve résumé",
        "Å vs A\u030a vs \u212b", "ﬁ ﬂ ① ｆｕｌｌｗｉｄｔｈ ㍿ ¼ x²", "ẞ ß İstanbul ǅ",
        "你好，世界！", "今天天气很好。我们一起去公园散步吧。", "こんにちは、カタカナ・ひらがな。",
        "안녕하세요 세계", "Привет, мир!", "مرحبا بالعالم", "नमस्ते दुनिया", "ไทย ภาษา",
        "👍 😀 🎉🎉🎉 🚀", "👍🏽 👨‍👩‍👧‍👦 🇯🇵🇫🇷 ❤️ 1️⃣", "emoji👍inside😀words",
        "zero\u200bwidth\u200djoiner\ufeffbom", "nbsp\u00a0here\u3000ideographic\u2028sep\u0085nel",
        "a" * 300, "supercalifragilisticexpialidocious" * 12, "x" + "yz" * 200,
        "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQ=" * 5,
        "!!!???...,,,;;;:::", "----====____****", "$$$ %%% ^^^ &&& ~~~ ```",
    ]
    texts += [str(10 ** n + 7 * n)[: n + 1] for n in range(0, 25)]
    texts += ["Pi is 3.14159265358979, e is 2.718, and 1,000,000 is a million.",
              "Numbers: 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
              "2024-01-15T10:30:00Z v1.2.3 0x1F 1e-5 -42 +7 ٣٤٥ ४५६ １２３"]
    texts += [PROSE, CODE, MULTILINGUAL, PROSE + CODE + MULTILINGUAL]
    for tok in special_tokens:
        texts += [f"{tok}", f"Hello{tok}world", f" {tok} spaced {tok} ", f"{tok}{tok}",
                  f"start {tok}\nnext line{tok}", f"a{tok}b {tok}c"]
    # Seeded random strings over a pool that stresses the regexes and normalizers.
    pool = (list("abcXYZ019 _-.,'!?\n\t\r") + ["  ", "'s", "'LL", "é", "e\u0301", "ß", "中", "文",
            "カ", "한", "👍", "🏽", "\u200d", "\u00a0", "\u3000", "\u2028", "\u0085", "١", "²",
            "ﬁ", "Ⅳ", "\u0301", "𝔘", "\U0001f600"] + list(special_tokens))
    rng = random.Random(42)
    for _ in range(200):
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    return texts


INVALID_UTF8 = [b"abc\xffdef", b"\xe4\xbd", b"ok \xed\xa0\x80 surrogate", b"\xc0\xaf overlong",
                b"\xf0\x9f\x98", b"trunc \xe4\xbd\xa0\xe5 end", b"\x80\x80\x80", b"\xf4\x90\x80\x80"]


def special_ids(tok, config, ids):
    add_bos = config.get("add_bos_token")
    add_eos = config.get("add_eos_token")
    if add_bos is None and add_eos is None:
        return None  # the post_processor decides: tok.encode(add_special_tokens=True)

    def token_id(entry):
        if isinstance(entry, dict):
            entry = entry.get("content")
        return tok.token_to_id(entry) if entry else None

    bos, eos = token_id(config.get("bos_token")), token_id(config.get("eos_token"))
    return ([bos] if add_bos and bos is not None else []) + ids + \
        ([eos] if add_eos and eos is not None else [])


def write_expected(name, directory):
    tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    specials = [t.content for t in tok.get_added_tokens_decoder().values()][:6]
    cases = []
    for text in texts_for(specials):
        ids = tok.encode(text, add_special_tokens=False).ids
        with_special = special_ids(tok, config, ids)
        if with_special is None:
            with_special = tok.encode(text, add_special_tokens=True).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        cases.append({"text": text, "ids": ids, "ids_special": with_special, "decoded": decoded,
                      "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
                      "lossless": decoded == text})
    invalid = [{"hex": raw.hex(),
                "ids": tok.encode(raw.decode("utf-8", errors="replace"),
                                  add_special_tokens=False).ids} for raw in INVALID_UTF8]
    out = {"tokenizer": name, "tokenizers_version": __import__("tokenizers").__version__,
           "cases": cases, "invalid_utf8": invalid}
    path = os.path.join(OUT, f"expected_{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    print(f"{path}: {len(cases)} cases, {sum(c['lossless'] for c in cases)} lossless")


def save(tok, name, config, merges_as_strings=False, ignore_merges=False):
    directory = os.path.join(OUT, name)
    os.makedirs(directory, exist_ok=True)
    data = json.loads(tok.to_str())
    if merges_as_strings:
        data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    if ignore_merges:
        data["model"]["ignore_merges"] = True
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))  # must load back
    return directory


def train_llama3_bpe(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken("<|eot_id|>", special=True, normalized=False),
                            AddedToken("<mask>", special=True, lstrip=True, rstrip=True,
                                       normalized=False)])
    tok.add_tokens([AddedToken("[WORD]", single_word=True, normalized=True),
                    AddedToken("custom_tok", normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return save(tok, "llama3_bpe", config, ignore_merges=True)


def train_sp_bpe(corpus):
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on Metaspace words so no token spans two words, then serve with the Llama-2
    # normalizer pipeline (no pre-tokenizer), as published SentencePiece conversions do.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=1200, limit_alphabet=120, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens)
    tok.train_from_iterator(corpus, trainer)
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_tokens([AddedToken("[MARK]", normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizerFast"}
    sp_dir = save(tok, "sp_bpe", config, merges_as_strings=True)

    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return sp_dir, save(tok, "sp_metaspace", config)


def component_json(**parts):
    """The tokenizer.json form of a normalizer / pre_tokenizer, as the library serializes it."""
    tok = Tokenizer(models.BPE())
    for name, value in parts.items():
        setattr(tok, name, value)
    data = json.loads(tok.to_str())
    return data[next(iter(parts))]


def write_components():
    """Pieces of each pre-tokenizer and output of each normalizer on sample texts, for the unit
    tests of the steps that the trained and real tokenizers do not use."""
    texts = ["Hello, world! It's 2024:  numbers 1234567 and  spaces\n\nnew\tlines",
             " leading and trailing  ", "café ﬁ ① ＡＢＣ Ǆ e\u0301 ÅNGSTRÖM", "a.b..c...d", "",
             "中文字符 and カタカナ 123 ４５６", "--==!!??", "x"]
    pre = [
        ("Split", pre_tokenizers.Split(Regex(r"\p{N}+"), behavior=b, invert=inv))
        for b in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
        for inv in [False, True]]
    pre += [("Split", pre_tokenizers.Split(" ", behavior="merged_with_next")),
            ("Split", pre_tokenizers.Split(Regex(r"\s+"), behavior="removed", invert=False)),
            ("ByteLevel", pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)),
            ("ByteLevel", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
            ("Metaspace", pre_tokenizers.Metaspace(prepend_scheme="always", split=True)),
            ("Metaspace", pre_tokenizers.Metaspace(prepend_scheme="never", split=False)),
            ("Digits", pre_tokenizers.Digits(individual_digits=True)),
            ("Digits", pre_tokenizers.Digits(individual_digits=False)),
            ("Whitespace", pre_tokenizers.Whitespace()),
            ("WhitespaceSplit", pre_tokenizers.WhitespaceSplit()),
            ("Punctuation", pre_tokenizers.Punctuation()),
            ("Sequence", pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.Punctuation(behavior="contiguous")]))]
    norms = [normalizers.NFC(), normalizers.NFD(), normalizers.NFKC(), normalizers.NFKD(),
             normalizers.Lowercase(), normalizers.Strip(), normalizers.StripAccents(),
             normalizers.Prepend("▁"), normalizers.Replace(Regex(r"\s+"), " "),
             normalizers.Replace("a", "AA"),
             normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])]
    out = {"pre_tokenizers": [], "normalizers": []}
    for _, p in pre:
        out["pre_tokenizers"].append({"pre_tokenizer": component_json(pre_tokenizer=p), "cases": [
            {"text": t, "pieces": [piece for piece, _ in p.pre_tokenize_str(t)]} for t in texts]})
    for n in norms:
        out["normalizers"].append({"normalizer": component_json(normalizer=n), "cases": [
            {"text": t, "normalized": n.normalize_str(t)} for t in texts]})
    path = os.path.join(OUT, "expected_components.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    print(f"{path}: {len(pre)} pre-tokenizers, {len(norms)} normalizers")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_components()
    corpus = training_corpus()
    llama3 = train_llama3_bpe(corpus)
    sp, sp_meta = train_sp_bpe(corpus)
    for name, directory in [("llama3_bpe", llama3), ("sp_bpe", sp), ("sp_metaspace", sp_meta)]:
        write_expected(name, directory)
    for name in ["qwen3", "deepseek_v3"]:
        directory = os.path.join(SHARED, name)
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            write_expected(name, directory)
        else:
            print(f"skipping {name}: {directory} not found", file=sys.stderr)


if __name__ == "__main__":
    main()
