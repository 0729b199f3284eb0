#!/usr/bin/env python3
"""Builds the demo model's English corpus from freely licensed text that Debian packages ship.

Sources and licences: tools/DEMO_CORPUS.md. Install them first (Debian 12):
  apt-get install -y bible-kjv bible-kjv-text fortunes fortunes-min fortunes-bofh-excuses \
      jargon-text python3-doc debian-reference-en
Writes OUT/train.jsonl.gz and OUT/heldout.jsonl.gz (one {"source", "text"} document a line),
OUT/heldout.txt (the held-out documents joined by blank lines) and OUT/stats.json. The split is
by document, seeded, so a chapter or a page is wholly in one split.

  python3 tools/build_demo_corpus.py --out .corpus
"""
import argparse
import glob
import gzip
import hashlib
import html
import html.parser
import json
import os
import random
import re
import subprocess
import sys

FORTUNE_DIR = "/usr/share/games/fortunes"
# ascii-art and art are drawings, not prose.
FORTUNE_SKIP = {"ascii-art", "art"}
JARGON_TXT = "/usr/share/doc/jargon-text/jargon.txt.gz"
PYTHON_HTML = "/usr/share/doc/python3.11/html"
DEBIAN_REFERENCE = "/usr/share/debian-reference"


def bible_documents():
    """One document per chapter of the King James Version, verses joined into paragraphs."""
    out = subprocess.run(["bible", "gen1:1-rev22:21"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, COLUMNS="100000")).stdout
    docs, title, verses = [], None, []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" ") and re.match(r"^[0-9A-Za-z ]+ \d+$", line):
            if title and verses:
                docs.append(title + "\n\n" + "\n".join(verses))
            title, verses = line.strip(), []
        elif re.match(r"^\s+\d+ ", line):
            verses.append(line.strip())
        elif verses:  # a wrapped verse
            verses[-1] += " " + line.strip()
    if title and verses:
        docs.append(title + "\n\n" + "\n".join(verses))
    return docs


def fortune_documents():
    """One document per cookie of each fortune file (the offensive ones are not installed)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(FORTUNE_DIR, "*"))):
        name = os.path.basename(path)
        if "." in name or name in FORTUNE_SKIP or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for cookie in re.split(r"^%\s*$", f.read(), flags=re.M):
                cookie = cookie.strip("\n")
                if len(cookie.split()) >= 3:
                    docs.append((name, cookie))
    return docs


def jargon_documents(chunk_chars=4000):
    """The Jargon File in chunks of whole paragraphs; the bare headword lists are dropped."""
    with gzip.open(JARGON_TXT, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    docs, current = [], []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = "\n".join(l.strip() for l in paragraph.strip("\n").splitlines())
        if len(paragraph.split()) < 4:
            continue
        current.append(paragraph)
        if sum(len(p) for p in current) >= chunk_chars:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


class TextExtractor(html.parser.HTMLParser):
    """Plain text of the part of an HTML page inside the element that `keep` selects."""
    BLOCK = {"p", "div", "section", "pre", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
             "tr", "table", "blockquote", "br", "dl", "ul", "ol"}
    SKIP = {"script", "style", "head"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
            "source", "track", "wbr"}

    def __init__(self, keep):
        super().__init__(convert_charrefs=True)
        self.keep, self.depth, self.skip, self.parts, self.in_pre = keep, 0, 0, [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if self.depth:
            if tag not in self.VOID:
                self.depth += 1
        elif self.keep(tag, dict(attrs)):
            self.depth = 1
        if tag == "pre":
            self.in_pre += 1
        if self.depth and tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.in_pre = max(0, self.in_pre - 1)
        if self.depth and tag not in self.VOID:
            if tag in self.BLOCK:
                self.parts.append("\n\n")
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data if self.in_pre else re.sub(r"\s+", " ", data))

    def text(self):
        text = "".join(self.parts).replace("\u00b6", "")  # Sphinx's permalink pilcrows
        lines = [l.rstrip() for l in text.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(path, keep):
    parser = TextExtractor(keep)
    with open(path, encoding="utf-8", errors="replace") as f:
        parser.feed(f.read())
    return parser.text()


def python_doc_documents():
    """One document per page of the Python 3.11 documentation (Sphinx's main body only)."""
    keep = lambda tag, a: tag == "div" and a.get("role") == "main"
    paths = sorted(glob.glob(os.path.join(PYTHON_HTML, "**", "*.html"), recursive=True))
    skip = ("genindex", "py-modindex", "search.html", "/_static/")
    return [html_text(p, keep) for p in paths if not any(s in p for s in skip)]


def debian_reference_documents():
    """One document per chapter of the Debian Reference (DocBook HTML, navigation dropped)."""
    keep = lambda tag, a: tag == "div" and a.get("class") in ("chapter", "appendix", "preface")
    paths = sorted(glob.glob(os.path.join(DEBIAN_REFERENCE, "*.en.html")))
    return [html_text(p, keep) for p in paths if not p.endswith("index.en.html")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".corpus")
    ap.add_argument("--heldout-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    sources = [
        ("bible-kjv", "bible-kjv-text", lambda: [("bible-kjv", d) for d in bible_documents()]),
        ("fortunes", "fortunes, fortunes-min, fortunes-bofh-excuses", fortune_documents),
        ("jargon", "jargon-text", lambda: [("jargon", d) for d in jargon_documents()]),
        ("python-docs", "python3.11-doc", lambda: [("python-docs", d) for d in python_doc_documents()]),
        ("debian-reference", "debian-reference-en",
         lambda: [("debian-reference", d) for d in debian_reference_documents()]),
    ]
    seen, docs, stats = set(), [], {}
    for name, package, load in sources:
        loaded = load()
        if not loaded:
            sys.exit(f"[build_demo_corpus] no text from {name}: is {package} installed?")
        kept = 0
        for sub, text in loaded:
            text = text.strip()
            # Exact duplicates after whitespace and case folding (the fortune files repeat cookies).
            key = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
            if len(text) < 20 or key in seen:
                continue
            seen.add(key)
            docs.append({"source": name if sub == name else f"{name}/{sub}", "text": text})
            kept += 1
        stats[name] = {"package": package, "documents": kept,
                       "chars": sum(len(d["text"]) for d in docs[-kept:]) if kept else 0}
        print(f"{name:18s} {kept:7d} documents {stats[name]['chars'] / 1e6:7.2f} M chars "
              f"({len(loaded) - kept} dropped as short or duplicate)")

    rng = random.Random(args.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_heldout = max(1, int(len(docs) * args.heldout_fraction))
    heldout_ids = set(order[:n_heldout])
    train = [docs[i] for i in order[n_heldout:]]
    heldout = [docs[i] for i in sorted(heldout_ids)]

    os.makedirs(args.out, exist_ok=True)
    for name, split in (("train", train), ("heldout", heldout)):
        # mtime=0 keeps the gzip bytes identical from run to run.
        with open(os.path.join(args.out, f"{name}.jsonl.gz"), "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            for d in split:
                f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(d["text"] for d in heldout) + "\n")
    stats["split"] = {"seed": args.seed, "train_documents": len(train),
                      "heldout_documents": len(heldout),
                      "train_chars": sum(len(d["text"]) for d in train),
                      "heldout_chars": sum(len(d["text"]) for d in heldout)}
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats["split"]))


if __name__ == "__main__":
    main()
