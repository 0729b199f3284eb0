#!/usr/bin/env bash
# One call on the GPU machine: build for the GPU present with every core, run all tests (the
# GPU-only `cuda` label included), run the benchmarks, and end with a short summary.
# Logs go to $OUT (or out/) when set. Usage: scripts/gpu_run.sh [quick|bench|generate|profile|verify|trace]
# verify: build only the CLI and the test binaries with GPU rows, run them each under a timeout,
# then one end-to-end decode (a hung kernel must not eat the whole call).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
test_rc=0
if [ "${1:-}" = "trace" ]; then
  # A decode step's timeline (MARLIN_KERNEL_TRACE, README): a traced build of the CLI, one
  # synthetic FP4 decode (TRACE_CONFIG, default llama-3.1-8b), its launches in order.
  cmake -S . -B build-trace -G Ninja -DCMAKE_BUILD_TYPE=Release -DMARLIN_TESTS=OFF -DMARLIN_KERNEL_TRACE=ON \
      >"$out/configure.log" 2>&1 &&
    cmake --build build-trace -j "$(nproc)" --target marlin_cli >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
  MARLIN_TRACE_FILE="$out/trace.bin" ./build-trace/marlin bench generate --config "bench/configs/${TRACE_CONFIG:-llama-3.1-8b}.json" \
      --synthetic --bits 4 --prompt-len 512 --gen-len 16 --warmup 1 --runs 1
  python3 tools/kernel_timeline.py "$out/trace.bin" --last 20 --ends
  exit 0
fi
if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/configure.log" 2>&1; then
  tail -30 "$out/configure.log"; exit 1
fi
targets=()
[ "${1:-}" = "verify" ] || [ "${1:-}" = "decode-profile" ] && targets=(--target marlin_cli marlin_tests_cuda marlin_tests_models)
if ! cmake --build build-gpu -j "$(nproc)" "${targets[@]}" >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
grep -E "spill|Used [0-9]+ registers" "$out/build.log" | head -5
if [ "${1:-}" = "verify" ]; then
  timeout 300 ./build-gpu/tests/marlin_tests_cuda --gtest_filter="${CUDA_FILTER:-*}" >"$out/tests_cuda.log" 2>&1
  test_rc=$?
  grep -E "PASSED|FAILED|Failure|launches" "$out/tests_cuda.log" | head -40
  timeout 120 ./build-gpu/tests/marlin_tests_models --gtest_filter='*uda*:*Device*:*Backend*:*Fused*' \
      >"$out/tests_models.log" 2>&1 || test_rc=$?
  grep -E "PASSED|FAILED|Failure" "$out/tests_models.log" | head -20
  for mode in ${GENERATE_MODES-graph no-graph}; do
    graph=""; [ "$mode" = "no-graph" ] && graph="--no-graph"
    timeout 120 ./build-gpu/marlin bench generate --config bench/configs/llama-3.1-8b.json --synthetic \
        --bits 4 --prompt-len 512 --gen-len 128 --warmup 1 --runs 1 $graph 2>&1 | tee -a "$out/bench_generate.txt"
  done
  echo "tests exit code: $test_rc"
  [ -n "${2:-}" ] || exit 0
  set -- "$2"
fi
if [ "${1:-}" != "decode-profile" ]; then
  ctest --test-dir build-gpu --output-on-failure >"$out/tests.log" 2>&1
  test_rc=$?
  grep -E "tests passed|Failed|FAILED|\*\*\*" "$out/tests.log" | head -40
fi
if [ "${1:-}" = "" ] || [ "${1:-}" = "bench" ]; then
  ./build-gpu/marlin bench gemm --m 1,4,16,32,64,256,1024,4096 --iters 50 2>&1 | tee "$out/bench_gemm.txt"
fi
if [ "${1:-}" = "" ] || [ "${1:-}" = "generate" ]; then
  # End-to-end decode and prefill with synthetic weights of the real shapes (issue 8's table).
  # The MoE rows: GLM-4.7-Flash (MLA + MoE) and Qwen3-30B-A3B at batch 1, GLM at batch 8 (the
  # MoE decode kernels take a batch's tokens).
  for run in "llama-3.1-8b 16 1" "llama-3.1-8b 8 1" "llama-3.1-8b 4 1" "llama-3.1-8b 2 1" \
             "qwen3-8b 4 1" "llama-3.1-8b 4 8" "glm-4.7-flash 4 1" "glm-4.7-flash 4 8" "qwen3-30b-a3b 4 1"; do
    read -r cfg bits batch <<<"$run"
    echo "== $cfg bits $bits batch $batch" | tee -a "$out/bench_generate.txt"
    ./build-gpu/marlin bench generate --config "bench/configs/$cfg.json" --synthetic --bits "$bits" \
        --batch "$batch" --prompt-len 512 --gen-len 128 --warmup 1 --runs 1 2>&1 | tee -a "$out/bench_generate.txt"
  done
fi
echo "tests exit code: $test_rc"
if [ "${1:-}" = "decode-profile" ]; then
  # Every kernel of a few decode steps (after a PROFILE_PROMPT-token prompt, default 4) of a
  # 4-layer model of CONFIG's shapes, timed by ncu one
  # launch at a time (eager steps: ncu times kernels, not graph replays), summed by name.
  # NCU_CACHE=none keeps L2 as the previous kernel left it (ncu flushes it before each launch
  # by default, which inflates the small kernels' times).
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['num_hidden_layers']=4; json.dump(c,open(sys.argv[2],'w'))" \
      "bench/configs/${PROFILE_CONFIG:-llama-3.1-8b}.json" "$out/profile_config.json"
  timeout 300 ncu --clock-control none --cache-control "${NCU_CACHE:-all}" --metrics gpu__time_duration.sum --csv \
      ./build-gpu/marlin bench generate --config "$out/profile_config.json" --synthetic \
      --bits "${PROFILE_BITS:-4}" --prompt-len "${PROFILE_PROMPT:-4}" --gen-len 4 --warmup 0 --runs 1 --no-graph >"$out/ncu.csv" 2>&1
  python3 tools/ncu_kernel_summary.py "$out/ncu.csv" --after "${PROFILE_AFTER:-}" | tee "$out/ncu_summary.txt"
fi
if [ "${1:-}" = "profile" ] && command -v ncu >/dev/null 2>&1; then
  ncu --launch-skip 4 --launch-count 1 -k regex:"${PROFILE_KERNEL:-mma}" \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      --section WarpStateStats --section SchedulerStats --section LaunchStats \
      ./build-gpu/marlin bench gemm --shapes "${PROFILE_SHAPE:-8192x28672}" --m "${PROFILE_M:-1}" \
      --formats "${PROFILE_FORMAT:-fp4}" --iters 8 >"$out/ncu.txt" 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots|No Eligible|Stall|Warp Cycles Per Issued|Theoretical Occ|Block Limit" "$out/ncu.txt" | head -40
fi
