#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch durations by kernel name: where a decode step's time goes.

Usage: ncu --metrics gpu__time_duration.sum --csv PROGRAM ... > ncu.csv
       tools/ncu_kernel_summary.py ncu.csv [--top 25] [--after NAME]

--after NAME counts only the launches after the first one whose name contains NAME (say
argmax_merge, the end of the prompt's step: the rest are decode steps).
"""
import argparse
import collections
import csv
import re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--after", default="")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu mixes the program's own output in
    total = collections.defaultdict(float)
    count = collections.Counter()
    started = not args.after
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(.*", "", row["Kernel Name"])[:90]
        if not started:
            started = args.after in name
            continue
        unit = row.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        total[name] += float(row["Metric Value"].replace(",", "")) * scale
        count[name] += 1
    grand = sum(total.values())
    print(f"{'kernel':90s} {'launches':>8s} {'total us':>10s} {'mean us':>9s} {'share':>6s}")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{name:90s} {count[name]:8d} {us:10.1f} {us / count[name]:9.2f} {100 * us / grand:5.1f}%")
    print(f"all kernels: {sum(count.values())} launches, {grand:.1f} us")


if __name__ == "__main__":
    main()
