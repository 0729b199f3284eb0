#!/usr/bin/env bash
# Copies the libraries the GPU machine lacks (PCRE2, utf8proc, DLPack, stb headers) from this
# machine's Debian packages into .deps/, which travels with the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/include .deps/lib
cp /usr/include/pcre2.h /usr/include/utf8proc.h .deps/include/
cp -r /usr/include/dlpack .deps/include/ 2>/dev/null || true
cp -r /usr/include/stb .deps/include/ 2>/dev/null || true
cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a /usr/lib/x86_64-linux-gnu/libutf8proc.a .deps/lib/
du -sh .deps
