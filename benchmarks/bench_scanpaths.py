"""Scan-path benchmark: cold build time of every order (256x256 images, 16x64x64 video) and the
locality table on 16x16.

    python benchmarks/bench_scanpaths.py [--repeats 5]

"Cold" = a fresh ScanPath instance (empty cache) and gilbert's block memo cleared, i.e. the first
``order()`` call of a process, including the permutation check and the inverse the base class builds.
The best of ``--repeats`` cold builds is reported (the machine may be shared), and the median too.
On an oversubscribed CPU, torch's intra-op threads (used by the base class's permutation check and
inverse for L >= 32768) can stall for 100+ ms; ``--threads 1`` shows the build cost without that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from zigscan.scanpaths import format_locality_table, list_scanpaths, locality_table
from zigscan.scanpaths.orders import builtin_scanpaths
from zigscan.scanpaths.orders.hilbert import gilbert_block
from zigscan.scanpaths.registry import get_scanpath

GRID_2D = (256, 256)
GRID_3D = (16, 64, 64)
TARGET_MS = 50.0


def cold_build_ms(name: str, shape: tuple[int, ...], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        fresh = {p.name: p for p in builtin_scanpaths()}.get(name) or type(get_scanpath(name))()
        gilbert_block.cache_clear()
        t0 = time.perf_counter()
        fresh.order(shape)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="cold builds per path (default 5)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, load average (1 min): {load:.1f}\n"
    )

    builtins = {p.name for p in builtin_scanpaths()}
    for shape in (GRID_2D, GRID_3D):
        names = [n for n in list_scanpaths() if n in builtins and get_scanpath(n).ndim == len(shape)]
        grid = "x".join(map(str, shape))
        L = 1
        for side in shape:
            L *= side
        print(f"cold build of the order, grid {grid} (L = {L})")
        print(f"  {'path':<18} {'best ms':>8} {'median':>8}")
        worst = 0.0
        for n in names:
            t = cold_build_ms(n, shape, args.repeats)
            worst = max(worst, min(t))
            print(f"  {n:<18} {min(t):8.2f} {statistics.median(t):8.2f}")
        verdict = "OK" if worst < TARGET_MS else "SLOW"
        print(f"  slowest best-of-{args.repeats}: {worst:.2f} ms (target < {TARGET_MS:.0f} ms: {verdict})\n")

    print("locality on 16x16 (scan distance between 4-neighbours; continuity = share of neighbour steps)")
    print(
        format_locality_table(
            locality_table([n for n in list_scanpaths() if get_scanpath(n).ndim == 2], (16, 16))
        )
    )


if __name__ == "__main__":
    main()
