"""CPU benchmark of every registered mixer's pure-PyTorch reference: forward + backward time.

    python benchmarks/bench_mixers_cpu.py --threads 2                  # the issue-13 table (below)
    python benchmarks/bench_mixers_cpu.py --mixers 'mamba*' --lengths 256 --no-main-job

Two tables, float32, ``impl="reference"``, forward + backward, median of ``--repeats`` after one warm-up:

* main job: the whole network of ``configs/fashion_zigma.yaml`` (zigma-T/2, width 128, depth 8, patch 4:
  49 tokens, batch 64, zigzag-8) with each mixer, and its ratio to ``attention-causal`` (targets: mamba
  <= 3x, every other linear mixer <= 2x);
* mixer alone at B=2, D=192 and each of ``--lengths`` (default 1024 and 4096; target < 1 s at 1024).

Candidates are interleaved (every repeat times each row once, in turn), so load from other processes on
a shared machine falls on all rows alike. The row ``mamba [before]`` is the previous formulation of the
Mamba reference (the chunked doubling scan of ``ssm_ref.selective_scan(method="chunk")`` and
``nn.Conv1d``'s depthwise convolution), timed in the same run: the before/after comparison of issue 13. The row
``mamba [pytorch loop]`` is today's pure-PyTorch token loop with the fused C scan (``cpu_scan``, which
``mamba`` takes on a CPU where a C compiler builds it) switched off.
Of the ``parallel-K`` family only K in {2, 8} run unless named with ``--mixers`` (its cost is K x mamba).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from unittest import mock

from zigscan.diffusion.cli import tune_openmp_wait

tune_openmp_wait()  # as the main job runs; only takes effect before torch is imported, hence the noqa below

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from zigscan.backbones import create_model, get_mixer, list_mixers  # noqa: E402
from zigscan.backbones.mixers import mamba as mamba_module  # noqa: E402

TARGET_S = 1.0  # mixer alone at L=1024
PARALLEL_KEPT = ("parallel-2", "parallel-8")
BEFORE = "mamba [before]"
LOOP = "mamba [pytorch loop]"  # the pure-PyTorch token loop, without the fused C scan (backbones/mixers/cpu_scan.py)
BASELINE = "attention-causal"
# the main job's network (configs/fashion_zigma.yaml) and batch
MAIN_JOB = dict(preset="zigma-T/2", schedule="zigzag-8", hidden_size=128, depth=8, patch_size=4, batch=64)
MAMBA_TARGET, LINEAR_TARGET = 3.0, 2.0  # x attention-causal at the main job's size (issue 13)
NOT_LINEAR = ("attention", "attention-causal", "bimamba", "parallel-*")  # rows without the 2x target


def select(patterns: list[str] | None) -> list[str]:
    names = list_mixers()
    if patterns:
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return [n for n in names if not n.startswith("parallel-") or n in PARALLEL_KEPT]


@contextlib.contextmanager
def mamba_before() -> Iterator[None]:
    """The Mamba reference as it was before issue 13: chunked doubling scan, ``nn.Conv1d`` convolution."""

    def conv_before(x, weight, bias=None, silu=False):  # (b, L, d) -> (b, L, d), as core_reference did
        L = x.shape[1]
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])
        y = y[..., :L].transpose(1, 2)
        return F.silu(y) if silu else y

    saved = mamba_module.selective_scan, mamba_module.causal_conv1d
    mamba_module.selective_scan = functools.partial(saved[0], method="chunk")
    mamba_module.causal_conv1d = conv_before
    try:
        yield
    finally:
        mamba_module.selective_scan, mamba_module.causal_conv1d = saved


def pytorch_loop() -> contextlib.AbstractContextManager:
    """Mamba's pure-PyTorch token loop: the fused C scan switched off (ZIGSCAN_NATIVE_SCAN=0)."""
    return mock.patch.dict(os.environ, {"ZIGSCAN_NATIVE_SCAN": "0"})


def _mixer_name(row: str) -> str:
    return "mamba" if row in (BEFORE, LOOP) else row


def _context(row: str):
    return mamba_before() if row == BEFORE else pytorch_loop() if row == LOOP else contextlib.nullcontext()


def main_job_case(row: str) -> Callable[[], None]:
    """One forward + backward of the main job's whole network with this mixer."""
    torch.manual_seed(0)
    cfg = MAIN_JOB
    model = create_model(cfg["preset"], mixer=_mixer_name(row), schedule=cfg["schedule"], mixer_impl="reference",
                         hidden_size=cfg["hidden_size"], depth=cfg["depth"], patch_size=cfg["patch_size"])
    b = cfg["batch"]
    x, t, y = torch.randn(b, 1, 28, 28), torch.rand(b), torch.randint(0, 10, (b,))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with _context(row):
            model(x, t, y).square().mean().backward()

    return step


def mixer_case(row: str, batch: int, length: int, dim: int) -> Callable[[], None]:
    """One forward + backward of the mixer alone on [batch, length, dim]."""
    torch.manual_seed(0)
    mixer = get_mixer(_mixer_name(row), dim, impl="reference")
    x = torch.randn(batch, length, dim, requires_grad=True)

    def step() -> None:
        mixer.zero_grad(set_to_none=True)
        x.grad = None
        with _context(row):
            mixer(x).square().mean().backward()

    return step


def interleaved(cases: dict[str, Callable[[], None]], repeats: int) -> dict[str, float | str]:
    """Median seconds per row; every repeat runs each row once, in turn (the first round is a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    failed: dict[str, str] = {}
    for r in range(repeats + 1):
        for name, step in cases.items():
            if name in failed:
                continue
            try:
                t0 = time.perf_counter()
                step()
                dt = time.perf_counter() - t0
            except Exception as exc:  # one broken mixer must not hide the others
                failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            if r:
                times[name].append(dt)
    return {name: failed.get(name) or statistics.median(ts) for name, ts in times.items()}


def _target(row: str) -> float | None:
    if _mixer_name(row) == "mamba":  # its rows: mamba, [before], [pytorch loop]
        return MAMBA_TARGET
    return None if any(fnmatch.fnmatchcase(row, p) for p in NOT_LINEAR) else LINEAR_TARGET


def print_main_job(rows: list[str], repeats: int) -> None:
    cfg = MAIN_JOB
    print(f"\nmain job: {cfg['preset']} width {cfg['hidden_size']} depth {cfg['depth']} patch {cfg['patch_size']} "
          f"(49 tokens), batch {cfg['batch']}, {cfg['schedule']}; whole network forward + backward")
    cases = {row: main_job_case(row) for row in rows}
    res = interleaved(cases, repeats)
    base = res.get(BASELINE)
    print(f"{'mixer':<18} {'step s':>8} {'x ' + BASELINE:>20}  target")
    for row in rows:
        t = res[row]
        if isinstance(t, str):
            print(f"{row:<18} {'ERROR':>8} {'':>20}  {t}")
            continue
        ratio = t / base if isinstance(base, float) else float("nan")
        goal = _target(row)
        verdict = "" if goal is None else f"<= {goal:.0f}x {'PASS' if ratio <= goal else 'MISS'}"
        print(f"{row:<18} {t:8.3f} {ratio:19.2f}x  {verdict}", flush=True)


def print_alone(rows: list[str], batch: int, length: int, dim: int, repeats: int) -> None:
    print(f"\nmixer alone: B={batch} L={length} D={dim}; forward + backward")
    cases = {row: mixer_case(row, batch, length, dim) for row in rows}
    res = interleaved(cases, repeats)
    print(f"{'mixer':<18} {'fwd+bwd s':>10}  {'target' if length == 1024 else ''}")
    for row in rows:
        t = res[row]
        if isinstance(t, str):
            print(f"{row:<18} {'ERROR':>10}  {t}")
            continue
        verdict = ("PASS" if t < TARGET_S else "MISS") if length == 1024 else ""
        print(f"{row:<18} {t:10.3f}  {verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixers", nargs="*", help="names or wildcards (default: all; parallel-K only K=2, 8)")
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096], help="mixer-alone lengths")
    ap.add_argument("--batch", type=int, default=2, help="mixer-alone batch")
    ap.add_argument("--dim", type=int, default=192, help="mixer-alone width")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the main job: 2)")
    ap.add_argument("--no-main-job", action="store_true", help="skip the main-job table")
    ap.add_argument("--no-before", action="store_true", help=f"skip the row {BEFORE!r}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = select(args.mixers)
    if not names:
        ap.error(f"no mixer matches {args.mixers}; see: zigscan mixers list")
    rows = list(names)
    if "mamba" in rows and not args.no_before:
        rows.insert(rows.index("mamba"), BEFORE)
    if "mamba" in rows:  # the pure-PyTorch reference beside the fused C scan that "auto" takes on a CPU
        rows.insert(rows.index("mamba"), LOOP)
    print(f"float32 impl=reference, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved repeats after 1 warm-up")
    if not args.no_main_job:
        print_main_job(([BASELINE] if BASELINE not in rows else []) + rows, args.repeats)
    for length in args.lengths:
        print_alone(rows, args.batch, length, args.dim, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
