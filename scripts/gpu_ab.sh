#!/usr/bin/env bash
# On the GPU machine, inside the tree that scripts/device_snapshot.sh made: builds this tree (the
# CLI and the CUDA test binaries) and, where old/ exists, the old tree's CLI beside it; runs the
# CUDA tests; then decodes each row of AB_ROWS with both binaries, one after the other, so
# machines that differ by several percent still compare within one call. The summary
# ($OUT/summary.txt) is printed last. Rows: "config bits batch [extra flags] [NAME=value
# environment]", separated by ';'.
# Usage: cd .snap && AB_ROWS="llama-3.1-8b 4 1;llama-3.1-8b 8 1" AB_REPEAT=2 scripts/gpu_ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${OUT:-out}"
out=$(cd "${OUT:-out}" && pwd)
sum="$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$sum"
jobs=$(nproc)
if [ -d old ] && [ "${AB_BUILD:-1}" = "1" ]; then
  (cd old && cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_TESTS=OFF >/dev/null &&
     cmake --build build-gpu -j $((jobs / 4 + 1)) --target marlin_cli >"$out/build_old.log" 2>&1) &
fi
if [ "${AB_BUILD:-1}" = "1" ]; then  # AB_BUILD=0: the binaries of an earlier call on a warm machine
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/configure.log" 2>&1 &&
    cmake --build build-gpu -j "$jobs" --target marlin_cli marlin_tests_cuda marlin_tests_models >"$out/build.log" 2>&1 ||
    { grep -E "error" "$out/build.log" | head -30; exit 1; }
fi
wait
if [ "${AB_TESTS:-1}" = "1" ]; then
  timeout 300 ./build-gpu/tests/marlin_tests_cuda >"$out/tests_cuda.log" 2>&1
  echo "marlin_tests_cuda exit code $?" >>"$sum"
  grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$out/tests_cuda.log" | head -20 >>"$sum"
  timeout 200 ./build-gpu/tests/marlin_tests_models --gtest_filter='*uda*:*Device*:*Backend*:*Fused*' \
      >"$out/tests_models.log" 2>&1
  echo "marlin_tests_models (CUDA rows) exit code $?" >>"$sum"
  grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$out/tests_models.log" | head -20 >>"$sum"
fi
decode() {  # binary config bits batch [flags... NAME=value...]: the decode and roofline lines, joined
  local bin=$1 cfg=$2 bits=$3 batch=$4
  shift 4
  local flags=() envs=()
  for a in "$@"; do if [[ $a =~ ^[A-Z_0-9]+= ]]; then envs+=("$a"); else flags+=("$a"); fi; done
  set -- "${flags[@]}"
  env "${envs[@]}" "$bin" bench generate --config "bench/configs/$cfg.json" --synthetic --bits "$bits" --batch "$batch" \
      --prompt-len 512 --gen-len 128 --warmup 1 --runs 1 "$@" 2>&1 | grep -E "decode  |roofline" | tr -s ' \n' ' '
}
IFS=';' read -ra rows <<<"${AB_ROWS:-llama-3.1-8b 4 1;llama-3.1-8b 8 1;llama-3.1-8b 4 8}"
for ((rep = 1; rep <= ${AB_REPEAT:-1}; ++rep)); do
  for row in "${rows[@]}"; do
    read -ra r <<<"$row"
    [ -x old/build-gpu/marlin ] && echo "old | ${r[*]} | $(decode old/build-gpu/marlin "${r[@]}")" >>"$sum"
    echo "new | ${r[*]} | $(decode build-gpu/marlin "${r[@]}")" >>"$sum"
  done
done
cat "$sum"
