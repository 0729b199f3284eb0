#!/usr/bin/env python3
"""List, for every kernel that waits in griddepcontrol.wait (pdl.cuh), the global loads it issues
before its first wait, from the SASS of a build's CUDA objects.

    tools/sass_loads_before_wait.py build [--cuobjdump PATH] [--all]

A programmatic dependent may read before its wait only what no earlier kernel of the step writes
(weights, norm weights, hints it checks after the wait). nvcc may move a read-only load
(`ld.global.nc`, which it makes of a const __restrict__ pointer) above the wait, and reuse a read
made before the wait for one written after it: the twenty-third session found both (the MoE down
kernel's activations, the decode attention's cache slot; docs/PERFORMANCE.md). Each row names the
object, the kernel and the loads before its first wait (SASS `ACQBULK`); read them against the
source. cuobjdump is not in every CUDA toolkit install; the `nvidia-cuda-cuobjdump` wheel has one.
Without --all, the GEMM kernels' weight copies (LDGSTS, issued before the wait by design) are left
out.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys


def kernels_with_early_loads(sass, include_copies):
    """(kernel, [load instructions]) for each function whose loads precede its first wait."""
    function, waited, loads = None, False, []
    for line in sass.splitlines():
        match = re.search(r"Function : (\S+)", line)
        if match:
            function, waited, loads = match.group(1), False, []
            continue
        if function is None or waited:
            continue
        if "ACQBULK" in line:
            waited = True
            if loads:
                yield function, loads
        elif re.search(r"\bLDG(STS)?\b|\bLDG\.", line) and (include_copies or "LDGSTS" not in line):
            loads.append(re.sub(r"\s+", " ", line.split("*/", 1)[1].split(";")[0]).strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", help="a build directory (its *.cu.o are read)")
    parser.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    parser.add_argument("--all", action="store_true", help="also list cp.async copies (LDGSTS)")
    args = parser.parse_args()
    objects = sorted(glob.glob(os.path.join(args.build, "**", "*.cu.o"), recursive=True))
    if not objects:
        sys.exit(f"no CUDA objects (*.cu.o) under {args.build}")
    for path in objects:
        try:
            sass = subprocess.run([args.cuobjdump, "-sass", path], capture_output=True, text=True,
                                  check=True).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(f"{args.cuobjdump} -sass {path} failed: {error}")
        for function, loads in kernels_with_early_loads(sass, args.all):
            shown = " | ".join(loads[:4]) + (f" | ... ({len(loads)})" if len(loads) > 4 else "")
            print(f"{os.path.basename(path)} {function[:120]}: {shown}")


if __name__ == "__main__":
    main()
