#!/usr/bin/env bash
# Builds (scripts/setup.sh) and runs the test suite. The GPU-only tests (label cuda) run when a
# GPU is present; elsewhere they are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ctest --test-dir build --output-on-failure
else
  ctest --test-dir build --output-on-failure -LE cuda
fi
