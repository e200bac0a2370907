"""CPU benchmark of every registered mixer's pure-PyTorch reference: forward + backward time.

    python benchmarks/bench_mixers_cpu.py                       # all mixers, B=2, L=1024, D=192
    python benchmarks/bench_mixers_cpu.py --mixers 'mamba*' --length 256

Median over ``--repeats`` runs after one warm-up, float32, ``impl="reference"``. The target is < 1 s per
forward + backward at the default size (PASS / MISS column). To save time, of the ``parallel-K`` family
only K in {2, 8} run unless named explicitly with ``--mixers`` (its cost is K times ``mamba``).
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time

import torch

from zigscan.backbones import get_mixer, list_mixers

TARGET_S = 1.0
PARALLEL_KEPT = ("parallel-2", "parallel-8")


def select(patterns: list[str] | None) -> list[str]:
    names = list_mixers()
    if patterns:
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return [n for n in names if not n.startswith("parallel-") or n in PARALLEL_KEPT]


def time_mixer(name: str, batch: int, length: int, dim: int, repeats: int) -> tuple[float, float]:
    """(median forward s, median forward+backward s)."""
    torch.manual_seed(0)
    mixer = get_mixer(name, dim, impl="reference")
    x = torch.randn(batch, length, dim, requires_grad=True)
    fwd, total = [], []
    for i in range(repeats + 1):  # the first run is the warm-up
        mixer.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        y = mixer(x)
        t1 = time.perf_counter()
        y.square().mean().backward()
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    return statistics.median(fwd), statistics.median(total)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixers", nargs="*", help="names or wildcards (default: all; parallel-K only K=2, 8)")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = select(args.mixers)
    if not names:
        ap.error(f"no mixer matches {args.mixers}; see: zigscan mixers list")
    print(f"B={args.batch} L={args.length} D={args.dim} float32 impl=reference, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, median of {args.repeats} after 1 warm-up, target < {TARGET_S:.1f} s")
    print(f"{'mixer':<18} {'fwd s':>8} {'fwd+bwd s':>10}  target")
    for name in names:
        try:
            f, t = time_mixer(name, args.batch, args.length, args.dim, args.repeats)
        except Exception as exc:  # one broken mixer must not hide the others
            print(f"{name:<18} {'ERROR':>8} {'':>10}  {type(exc).__name__}: {exc}")
            continue
        print(f"{name:<18} {f:8.3f} {t:10.3f}  {'PASS' if t < TARGET_S else 'MISS'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
