#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan) into build-fuzz/ and runs each
# for SECONDS (default 30) on its seed corpus tests/fixtures/fuzz/<name>/ (fuzz/<name>_fuzz.cpp).
# New inputs go to a scratch corpus in the build dir, crashes to build-fuzz/fuzz/artifacts/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 60 safetensors_fuzz
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
shift || true
build=${MARLIN_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${MARLIN_FUZZ_JOBS:-$(nproc)}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in "$root"/fuzz/*_fuzz.cpp; do targets+=("$(basename "$source" .cpp)"); done
fi

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMARLIN_FUZZ=ON -DMARLIN_CUDA=OFF \
  -DMARLIN_TESTS=OFF -DMARLIN_CPU_NATIVE=OFF >/dev/null
ninja -C "$build" -j "$jobs" "${targets[@]}"

mkdir -p "$build/fuzz/artifacts"
status=0
for target in "${targets[@]}"; do
  name=${target%_fuzz}
  seeds="$root/tests/fixtures/fuzz/$name"
  scratch="$build/fuzz/corpus/$name"
  mkdir -p "$scratch"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$build/fuzz/artifacts/$target-")
  [ -f "$root/fuzz/$target.dict" ] && args+=(-dict="$root/fuzz/$target.dict")
  corpora=("$scratch")
  [ -d "$seeds" ] && corpora+=("$seeds")
  echo "== $target: ${seconds}s, seeds $seeds"
  if ! "$build/fuzz/$target" "${args[@]}" "${corpora[@]}"; then
    echo "== $target FAILED (reproducer in $build/fuzz/artifacts/)"
    status=1
  fi
done
exit $status
