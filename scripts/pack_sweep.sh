#!/usr/bin/env bash
# On the GPU machine, with the .pack/ of scripts/device_pack.sh carried: runs the packed binaries
# once per environment variant, interleaved SWEEP_REPEAT times, so that switches of one binary
# are compared within one call. For each variant: the CUDA tests of SWEEP_TESTS (a gtest filter;
# empty: none) under that variant, then each command of SWEEP_CMDS (marlin's arguments; the
# lines of its output that carry the figures). Variants: ';'-separated lists of NAME=value
# (space-separated), '-' for none; a variant's PACK_CLI=NAME runs the packed binary NAME for the
# commands instead of marlin (another build, added to .pack/bin as NAME.xz, e.g. the session's
# start: compared in the same call). Prints one line a test run and one a command run.
# Usage: SWEEP_ENVS="-;MARLIN_MOE_DOWN_WARPS=16" SWEEP_TESTS='Moe*' \
#   SWEEP_CMDS="bench moe --tokens 1 --iters 50" SWEEP_REPEAT=2 bash scripts/pack_sweep.sh
set -uo pipefail
cd "$(dirname "$0")/.."
run=.pack/run.sh
[ -f "$run" ] || { echo "no .pack/ here: run scripts/device_pack.sh and carry .pack" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
IFS=';' read -ra envs <<<"${SWEEP_ENVS:--}"
IFS=';' read -ra cmds <<<"${SWEEP_CMDS:-bench moe --tokens 1 --iters 50}"
with_env() {  # variant, then the command
  local variant=$1
  shift
  if [ "$variant" = "-" ]; then "$@"; else env $variant "$@"; fi
}
for variant in "${envs[@]}"; do
  [ -n "${SWEEP_TESTS:-}" ] || break
  result=$(with_env "$variant" timeout 300 bash "$run" marlin_tests_cuda --gtest_filter="$SWEEP_TESTS" 2>&1 |
             grep -E "^\[  (PASSED|FAILED) |FAILED  \]" | head -5 | tr -s ' \n' ' ')
  echo "tests [$variant]: $result"
done
for ((rep = 1; rep <= ${SWEEP_REPEAT:-1}; ++rep)); do
  for cmd in "${cmds[@]}"; do
    for variant in "${envs[@]}"; do
      read -ra args <<<"$cmd"
      cli=marlin
      [[ " $variant " =~ \ PACK_CLI=([^ ]+)\  ]] && cli=${BASH_REMATCH[1]}
      figures=$(with_env "$variant" timeout 200 bash "$run" "$cli" "${args[@]}" 2>&1 |
                  grep -E "^ +[0-9]+ [a-z_]+ |decode  |roofline|[0-9]x[0-9]+ +[0-9]+ |rror" | tr -s ' \n' ' ')
      echo "[$variant] $cmd | $figures"
    done
  done
done
