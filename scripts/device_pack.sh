#!/usr/bin/env bash
# Packs this machine's build of the CLI and of the CUDA test binary into .pack/ for the device
# tool's `carry`, so that a call runs them with nothing to compile there: it then costs its start
# and its run (eight `bench moe` runs: 11 s of wall time in session 21, where a call that builds
# takes 4-7 minutes). The binaries are stripped and xz-compressed (~13 MB each): with the
# working tree (~37 MB) they stay under the 64 MiB a call carries.
# The build directory must hold the GPU's arch (a machine without a GPU builds sm_90a, what the
# H100/H200 run), and its CPU code is built for this machine's CPU (-march=native unless
# MARLIN_CPU_NATIVE=OFF): session 21 ran it on the H200 machine as it is.
# Usage: scripts/device_pack.sh [BUILD_DIR]   (default build)
#   PACK_TARGETS: the targets packed (default "marlin_cli marlin_tests_cuda"; two fit the carry,
#   e.g. "marlin_tests_cuda marlin_tests_models" to run every CUDA test and CUDA model row).
# Then:  device run, carry [".pack"]: bash .pack/run.sh marlin bench moe --tokens 1
#                                     bash .pack/run.sh marlin_tests_cuda --gtest_filter='Moe*'
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
read -ra targets <<<"${PACK_TARGETS:-marlin_cli marlin_tests_cuda}"
ninja -C "$build" "${targets[@]}"
rm -rf .pack && mkdir -p .pack/bin .pack/lib
binaries=()
for target in "${targets[@]}"; do
  if [ "$target" = marlin_cli ]; then binaries+=("$build/marlin"); else binaries+=("$build/tests/$target"); fi
done
for binary in "${binaries[@]}"; do
  name=$(basename "$binary")
  cp "$binary" ".pack/bin/$name" && strip ".pack/bin/$name" && xz -T0 -6 ".pack/bin/$name"
done
# The Debian libraries they link that the device image may lack (cudart and cuBLAS are there).
ldd "${binaries[@]}" | awk '/pcre2|utf8proc/ {print $3}' | sort -u | while read -r lib; do cp -L "$lib" .pack/lib/; done
cat >.pack/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs one of the packed binaries (unpacked at its first use): bash .pack/run.sh NAME [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=$1
shift
[ -x "$here/bin/$name" ] || { xz -dkf "$here/bin/$name.xz" && chmod +x "$here/bin/$name"; }
export LD_LIBRARY_PATH="$here/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
exec "$here/bin/$name" "$@"
RUN
du -sh .pack
