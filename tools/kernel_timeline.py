#!/usr/bin/env python3
"""Print a decode step's kernel launches in order from a MARLIN_KERNEL_TRACE build's stamps.

    cmake -S . -B build-trace -DMARLIN_KERNEL_TRACE=ON -DMARLIN_TESTS=OFF && cmake --build build-trace
    MARLIN_TRACE_FILE=trace.bin build-trace/marlin bench generate --config bench/configs/llama-3.1-8b.json \
        --synthetic --bits 4 --gen-len 16
    tools/kernel_timeline.py trace.bin [--last 40] [--ends]
    tools/kernel_timeline.py trace.bin --layers moe_down   # medians over the file's layers

Each row is one launch (a graph replays the same grid id every step, so a grid's blocks are split
where their starts are 200 us apart): its kind, blocks, SMs used and most blocks on one SM, then in
microseconds from the first row's start: the first and last block start, the first and last end of
the wait for the previous kernel (pdl.cuh), and the first, median and last block end. `after`
is the time from the previous row's last block end to this row's first end of wait, `runs` from
its last end of wait to its last block end (what the launch adds once it may start). --ends
prints, for the GEMM launches, how the blocks' ends spread after the wait. Kernels that stamp
TRACE_MARK(1) / TRACE_MARK(2) inside (the MLA split kernel: q loaded, keys scored) get their
median and last mark after the wait printed below the table.
"""
import argparse
import collections
import statistics
import struct

KINDS = {1: "gemm", 2: "attn", 3: "norm", 4: "silu", 5: "gemm16", 7: "merge", 8: "mla", 9: "head_mm",
         10: "router", 11: "moe_up", 12: "moe_down", 13: "skinny"}
RECORD = struct.Struct("<QQQQIIII")  # kernel_trace.cuh: Record


def load(path):
    data = open(path, "rb").read()
    return [RECORD.unpack_from(data, i * RECORD.size) for i in range(len(data) // RECORD.size)]


def launches(records):
    by_grid = collections.defaultdict(list)
    for r in records:
        by_grid[r[0]].append(r)
    out = []
    for blocks in by_grid.values():
        blocks.sort(key=lambda r: r[1])
        current = [blocks[0]]
        for r in blocks[1:]:
            if r[1] - current[-1][1] > 200_000:
                out.append(current)
                current = []
            current.append(r)
        out.append(current)
    # The merge blocks are the attention grid's own: fold them into it.
    return sorted(out, key=lambda bl: min(r[1] for r in bl))


def summary(blocks):
    per_sm = collections.Counter(r[5] for r in blocks)
    ends = sorted(r[3] for r in blocks)
    kinds = {r[4] for r in blocks}
    kind = "attn+merge" if kinds == {2, 7} else KINDS.get(min(kinds), "?")
    return dict(kind=kind, n=len(blocks), sms=len(per_sm), most=max(per_sm.values()),
                s0=min(r[1] for r in blocks), s1=max(r[1] for r in blocks),
                w0=min(r[2] for r in blocks), w1=max(r[2] for r in blocks),
                e0=ends[0], emed=ends[len(ends) // 2], e1=ends[-1], blocks=blocks)


def print_layers(rows, first_kind):
    """Medians over the layers: the rows cut where `first_kind` starts, kept where the cut has the
    most common sequence of kinds (a decode step's first and last layers, and cut-off ones, differ)."""
    starts = [i for i, g in enumerate(rows) if g["kind"] == first_kind]
    layers = [rows[a:b] for a, b in zip(starts, starts[1:])]
    if not layers:
        print(f"no two launches of kind {first_kind!r}")
        return
    shape = collections.Counter(tuple(g["kind"] for g in layer) for layer in layers).most_common(1)[0][0]
    layers = [(layer, rows[starts[i + 1]], rows[starts[i] - 1] if starts[i] > 0 else None)
              for i, layer in enumerate(layers) if tuple(g["kind"] for g in layer) == shape]
    print(f"{len(layers)} layers of {len(shape)} launches; median µs over them")
    print(f"{'kind':10s} {'blocks':>6s} | {'after':>6s} {'runs':>6s}")
    for j, kind in enumerate(shape):
        afters, runs = [], []
        for layer, _, before in layers:
            g = layer[j]
            prev = layer[j - 1] if j > 0 else before
            prev_end = prev["e1"] if prev is not None else None
            if prev_end is not None:
                afters.append((g["w1"] - prev_end) / 1000.0)
            runs.append((g["e1"] - g["w1"]) / 1000.0)
        after = f"{statistics.median(afters):6.2f}" if afters else f"{'':6s}"
        print(f"{kind:10s} {layer[j]['n']:6d} | {after} {statistics.median(runs):6.2f}")
    periods = [(nxt["s0"] - layer[0]["s0"]) / 1000.0 for layer, nxt, _ in layers]
    print(f"layer period (start of one {first_kind} to the next): median {statistics.median(periods):.2f} µs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--last", type=int, default=40, help="rows to print, ending this many from the end")
    ap.add_argument("--ends", action="store_true")
    ap.add_argument("--layers", metavar="KIND",
                    help="instead of the rows: every launch of the repeating layer that starts at a launch of "
                         "KIND (e.g. moe_down), its median after and runs over the layers in the file, and the "
                         "median layer period")
    args = ap.parse_args()
    rows = [summary(b) for b in launches(load(args.trace))]
    if args.layers:
        return print_layers(rows[:-1], args.layers)
    rows = rows[-args.last - 1:-1]  # the newest launch may be cut off by the file's window
    if not rows:
        return
    base = rows[0]["s0"]
    us = lambda t: (t - base) / 1000.0
    print(f"{'kind':10s} {'blocks':>6s} {'SMs':>4s} {'max':>3s} | {'start':>15s} | {'wait ends':>15s} | "
          f"{'block ends: first, median, last':>31s} | {'after':>6s} {'runs':>6s}")
    prev_end = None
    for g in rows:
        after = (g["w1"] - prev_end) / 1000.0 if prev_end else 0.0
        runs = (g["e1"] - g["w1"]) / 1000.0
        print(f"{g['kind']:10s} {g['n']:6d} {g['sms']:4d} {g['most']:3d} | {us(g['s0']):7.2f} {us(g['s1']):7.2f} | "
              f"{us(g['w0']):7.2f} {us(g['w1']):7.2f} | {us(g['e0']):9.2f} {us(g['emed']):9.2f} {us(g['e1']):9.2f} | "
              f"{after:6.2f} {runs:6.2f}")
        prev_end = g["e1"]
    for g in rows:  # TRACE_MARK stamps (kernel_trace.cuh), where a kernel sets them
        for shift, name in ((0, "mark1"), (16, "mark2")):
            marks = sorted(((r[7] >> shift) & 0xFFFF) * 0.008 for r in g["blocks"] if (r[7] >> shift) & 0xFFFF)
            if marks:
                print(f"{g['kind']} {name} after the wait (us): median {statistics.median(marks):.2f} max {marks[-1]:.2f}")
    if args.ends:
        for g in rows:
            if not g["kind"].startswith("gemm"):
                continue
            ends = sorted((r[3] - g["w1"]) / 1000.0 for r in g["blocks"])
            q = lambda f: ends[min(len(ends) - 1, int(f * len(ends)))]
            print(f"{g['kind']} {g['n']} blocks, ends after the wait (us): min {ends[0]:.2f} p10 {q(0.1):.2f} "
                  f"median {statistics.median(ends):.2f} p90 {q(0.9):.2f} max {ends[-1]:.2f}")


if __name__ == "__main__":
    main()
