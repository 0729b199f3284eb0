#!/usr/bin/env bash
# Copies the working tree (HEAD, the uncommitted changes, untracked files) into .snap/ for the
# device tool's `carry`, with .deps/ (scripts/device_deps.sh) and links to models/ and the test
# fixtures instead of copies. With a commit argument, that commit's tree goes to .snap/old/ as
# well, so one device call can build both and compare them (scripts/gpu_ab.sh).
# Usage: scripts/device_snapshot.sh [OLD_COMMIT]; then run `cd .snap && scripts/gpu_ab.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .deps/lib ] || scripts/device_deps.sh >/dev/null
rm -rf .snap && mkdir .snap
git archive HEAD | tar -x -C .snap
patch_file=$(mktemp)
git diff HEAD --binary >"$patch_file"
# From the root with --directory: git apply run inside .snap (a subdirectory of this work tree)
# would skip every path outside .snap, silently.
if [ -s "$patch_file" ]; then git apply --directory=.snap "$patch_file"; fi
rm -f "$patch_file"
git ls-files --others --exclude-standard | while read -r f; do
  mkdir -p ".snap/$(dirname "$f")" && cp "$f" ".snap/$f"
done
link_shared() {  # $1: tree inside .snap, $2: the path back to the repository root
  cp -r .deps "$1/.deps"
  rm -rf "$1/models" "$1/tests/fixtures"
  ln -s "$2/models" "$1/models"
  ln -s "$2/../tests/fixtures" "$1/tests/fixtures"
}
link_shared .snap ..
if [ -n "${1:-}" ]; then
  mkdir .snap/old
  git archive "$1" | tar -x -C .snap/old
  link_shared .snap/old ../..
fi
du -sh .snap
