"""GPU check of every kernel-backed mixer: reference vs kernel vs upstream layer, then kernel timings.

    python benchmarks/gpu/check_mixers.py [--mixers mamba,gla,...] [--lengths 63,1000,4096]
                                          [--time-lengths 1024,4096,16384] [--out results.json]

For each mixer with a kernel (mamba-ssm / flash-linear-attention installed, CUDA present):
  1. builds it with impl="reference", copies the state dict into impl="kernel" and into the upstream
     layer (``build_upstream()``, strict load: the parameter names must match upstream's);
  2. on random inputs of odd and even lengths compares outputs, input gradients and parameter
     gradients: relative error ||a - b|| / ||b|| of kernel vs reference (float32, target < 1e-3) and of
     the bf16 kernel vs the float32 reference (target < 1e-2); also upstream vs our kernel path, and
     the "floor": our reference itself run in bf16 against the float32 reference, i.e. what bf16
     arithmetic alone costs (a kernel error near its floor is as good as bf16 allows);
  3. times forward+backward of the kernel (bf16, B=2, D=768) at several lengths (CUDA events, median).
A table is printed last; the JSON goes to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import traceback

import torch

from zigscan.backbones.mixers import MIXERS, get_mixer, kernel_available

KERNEL_MIXERS = ["mamba", "mamba2", "gla", "rwkv6", "hgrn2", "rwkv7", "deltanet", "gated-deltanet"]


def rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_once(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Output, input grad and per-parameter grads (float32 copies) of sum(module(x) * g)."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y = y[0] if isinstance(y, tuple) else y  # fla layers return (output, attentions, cache)
    (y.float() * g).sum().backward()
    grads = {n: p.grad.detach().float().clone() if p.grad is not None else None for n, p in module.named_parameters()}
    return y.detach().float(), x.grad.detach().float(), grads


def param_err(ga: dict, gb: dict) -> float:
    """Relative error over all parameter gradients, concatenated."""
    names = [n for n in gb if gb[n] is not None and ga.get(n) is not None]
    if not names:
        return float("nan")
    a = torch.cat([ga[n].flatten() for n in names])
    b = torch.cat([gb[n].flatten() for n in names])
    return rel(a, b)


def randomize_zero_parameters(module: torch.nn.Module, std: float = 0.02) -> list[str]:
    """Give all-zero parameters N(0, std) values; returns their names.

    Some layers start with zeros where the check needs signal: fla's RWKV7 zero-initialises ``o_proj``,
    so a fresh mixer outputs exactly 0 and "kernel == reference" would hold for any kernel (an earlier
    run reported errors of exactly 0 for rwkv7 that way)."""
    names = []
    with torch.no_grad():
        for n, p in module.named_parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, std)
                names.append(n)
    return names


def check(name: str, d_model: int, lengths: list[int], batch: int = 2, device: str = "cuda") -> list[dict]:
    """Equivalence rows of one mixer (``device`` is "cuda" except in the CPU tests of this control flow)."""
    torch.manual_seed(0)
    ref = get_mixer(name, d_model, impl="reference").to(device).float()
    zeroed = randomize_zero_parameters(ref)
    if zeroed:
        print(f"{name}: all-zero parameters given N(0, 0.02) for the check: {', '.join(zeroed)}", flush=True)
    ker = get_mixer(name, d_model, impl="kernel").to(device).float()
    ker.load_state_dict(ref.state_dict())
    up = None
    if hasattr(ref, "build_upstream"):
        up = ref.build_upstream().to(device).float()
        up.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes as upstream
        if getattr(up, "use_mem_eff_path", False) and not kernel_available("causal_conv1d")[0]:
            up.use_mem_eff_path = False  # upstream's fused Mamba2 path needs causal-conv1d (optional here)
        print(f"{name}: upstream {type(up).__module__}.{type(up).__name__} loaded our state dict (strict)", flush=True)
    ker_bf16 = get_mixer(name, d_model, impl="kernel").to(device)
    ker_bf16.load_state_dict(ref.state_dict())
    ker_bf16 = ker_bf16.to(torch.bfloat16)
    up_bf16 = None if up is None else up.to(torch.bfloat16)  # (up is no longer used in float32 below)
    ref_bf16 = copy.deepcopy(ref).to(torch.bfloat16)  # the floor: the same computation in bf16, no kernel
    rows, inputs = [], []
    # bf16 first, for every length; float32 after: a kernel that crashes in float32 (an illegal memory access
    # kills the process's CUDA context) then still leaves its bf16 rows.
    for L in lengths:
        x = torch.randn(batch, L, d_model, device=device)
        g = torch.randn(batch, L, d_model, device=device)
        y_r, dx_r, dp_r = run_once(ref, x, g)  # float32 reference: the yardstick for everything
        inputs.append((x, g, y_r, dx_r, dp_r))
        row: dict = {"mixer": name, "L": L, "ref_out_norm": float(y_r.norm()), "ref_dx_norm": float(dx_r.norm())}
        y_b, dx_b, dp_b = run_once(ker_bf16, x.bfloat16(), g)
        row.update(bf16_out=rel(y_b, y_r), bf16_dx=rel(dx_b, dx_r), bf16_dparam=param_err(dp_b, dp_r))
        y_f, dx_f, dp_f = run_once(ref_bf16, x.bfloat16(), g)
        row.update(floor_out=rel(y_f, y_r), floor_dx=rel(dx_f, dx_r), floor_dparam=param_err(dp_f, dp_r))
        inputs[-1] += (y_b,)
        rows.append(row)
        print(json.dumps(row), flush=True)
    crashed = None
    for row, (x, g, y_r, dx_r, dp_r, _) in zip(rows, inputs):
        if crashed:
            row.update(fp32_out=math.nan, fp32_dx=math.nan, fp32_dparam=math.nan, fp32_note=crashed)
        else:
            try:
                y_k, dx_k, dp_k = run_once(ker, x, g)
                row.update(fp32_out=rel(y_k, y_r), fp32_dx=rel(dx_k, dx_r), fp32_dparam=param_err(dp_k, dp_r))
            except (AssertionError, RuntimeError) as exc:  # some fla chunk kernels are bf16-only
                row.update(fp32_out=math.nan, fp32_dx=math.nan, fp32_dparam=math.nan,
                           fp32_note=f"kernel refuses float32: {exc}"[:120])
                if "illegal memory access" in str(exc):
                    crashed = row["fp32_note"] = f"kernel crashed in float32 at L={row['L']} ({exc})"[:160]
                    row["cuda_context_lost"] = True
        fp32 = [row[k] for k in ("fp32_out", "fp32_dx", "fp32_dparam") if not math.isnan(row[k])]
        bf16 = [row["bf16_out"], row["bf16_dx"], row["bf16_dparam"]]
        floor = [row["floor_out"], row["floor_dx"], row["floor_dparam"]]
        vacuous = row["ref_out_norm"] == 0 or row["ref_dx_norm"] == 0  # nothing to compare: not a pass
        row["ok"] = bool(not vacuous and not crashed  # a fault is a failure, a refusal (bf16-only) is not
                         and max(fp32, default=0.0) < 1e-3 and max(bf16) < 1e-2)  # the targets
        row["at_floor"] = bool(all(b <= 1.5 * f for b, f in zip(bf16, floor)))  # no worse than bf16 itself
        if not crashed or row.get("cuda_context_lost"):
            print(json.dumps({k: row[k] for k in ("mixer", "L", "fp32_out", "fp32_dx", "fp32_dparam", "ok")}
                             | ({"fp32_note": row["fp32_note"]} if "fp32_note" in row else {})), flush=True)
    # Last, the upstream layer (same weights, same bf16 input: our wiring vs theirs). It runs upstream's own
    # code (e.g. fla's Triton rotary for retnet), so a fault there must not cost the rows above.
    for row, (x, g, *_, y_b) in zip(rows, inputs):
        if up_bf16 is None or crashed:
            break
        try:
            y_u, _, _ = run_once(up_bf16, x.bfloat16(), g)
            row["upstream_out"] = rel(y_b, y_u)
        except (AssertionError, RuntimeError) as exc:
            row["upstream_note"] = f"upstream layer failed: {exc}"[:160]
            print(f"{name}: L={row['L']}: {row['upstream_note']}", flush=True)
            if "illegal memory access" in str(exc):
                row["cuda_context_lost"], row["ok"] = True, False
                break
    return rows


def time_kernel(name: str, d_model: int, lengths: list[int], batch: int = 2, reps: int = 10) -> list[dict]:
    m = get_mixer(name, d_model, impl="kernel").cuda().to(torch.bfloat16)
    rows = []
    for L in lengths:
        x = torch.randn(batch, L, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        try:
            for _ in range(2):  # warm-up (compilation / autotuning happens here)
                m(x).float().square().mean().backward()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                m(x).float().square().mean().backward()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            times.sort()
            rows.append({"mixer": name, "L": L, "ms": times[len(times) // 2],
                         "peak_GiB": torch.cuda.max_memory_allocated() / 2**30})
        except torch.cuda.OutOfMemoryError:
            rows.append({"mixer": name, "L": L, "ms": float("nan"), "peak_GiB": float("nan")})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def print_table(checks: list[dict], timings: list[dict], device: str | None, time_d_model: int = 768) -> None:
    cols = ["fp32_out", "fp32_dx", "fp32_dparam", "bf16_out", "bf16_dx", "bf16_dparam", "floor_dx", "upstream_out"]
    print(f"\nEquivalence on {device} (relative error; targets fp32 < 1e-3, bf16 < 1e-2; "
          "nan fp32: the kernel is bf16-only; floor: our reference in bf16)")
    print(f"{'mixer':16s} {'L':>5s} " + " ".join(f"{c:>12s}" for c in cols) + "  ok")
    for r in checks:
        if "error" in r:
            print(f"{r['mixer']:16s} ERROR {r['error']}")
            continue
        print(f"{r['mixer']:16s} {r['L']:5d} " + " ".join(f"{r.get(c, math.nan):12.2e}" for c in cols)
              + f"  {'yes' if r['ok'] else 'NO'}" + ("" if r.get("at_floor", True) else "  (above the bf16 floor)")
              + "".join(f"\n{'':23s}{r[k]}" for k in ("fp32_note", "upstream_note") if r.get(k)))
    print(f"\nKernel forward+backward, bf16, B=2, D={time_d_model} (median ms / peak GiB)")
    for r in timings:
        print(f"{r['mixer']:16s} L={r['L']:6d} {r['ms']:9.2f} ms {r['peak_GiB']:7.2f} GiB")


def merge(paths: list[str], out: str) -> dict:
    """One result file from several (e.g. one per GPU); unreadable files (a run killed mid-write) are skipped."""
    merged: dict = {"device": None, "checks": [], "timings": []}
    for path in paths:
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        merged["device"] = merged["device"] or d.get("device")
        merged["checks"] += d["checks"]
        merged["timings"] += d["timings"]
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
    return merged


def save(path: str, checks: list[dict], timings: list[dict]) -> None:
    """Written after every stage: a run cut short keeps what it measured."""
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "checks": checks, "timings": timings}, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default=",".join(KERNEL_MIXERS))
    ap.add_argument("--lengths", default="63,1000,4096")
    ap.add_argument("--time-lengths", default="1024,4096,16384")
    ap.add_argument("--d-model", type=int, default=256, help="width for the equivalence checks")
    ap.add_argument("--time-d-model", type=int, default=768, help="width for the timings")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    ap.add_argument("--skip-check", action="store_true", help="timings only (e.g. after parallel checks)")
    ap.add_argument("--skip-time", action="store_true", help="equivalence checks only")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these result files into --out and "
                    "print the table (no GPU needed)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "mixer_check.json"))
    args = ap.parse_args(argv)
    if args.merge:
        merged = merge(args.merge, args.out)
        print_table(merged["checks"], merged["timings"], merged["device"], args.time_d_model)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    checks, timings = [], []
    for name in args.mixers.split(","):
        spec = MIXERS.get(name)
        ok, why = kernel_available(spec.kernel_package or "?")
        if not ok:
            print(f"{name}: kernel package {spec.kernel_package} unavailable: {why}", flush=True)
            continue
        t0 = time.time()
        try:
            if not args.skip_check:
                rows = check(name, args.d_model, [int(v) for v in args.lengths.split(",")])
                checks += rows
                save(args.out, checks, timings)
                if any(r.get("cuda_context_lost") for r in rows):
                    print(f"{name}: a kernel crashed (see fp32_note / upstream_note) and took this process's CUDA "
                          f"context with it; time it in a fresh process: --mixers {name} --skip-check", flush=True)
                    break  # nothing else can run on this context
            if not args.skip_time:
                timings += time_kernel(name, args.time_d_model, [int(v) for v in args.time_lengths.split(",")],
                                       reps=args.reps)
        except Exception as exc:  # keep going: one broken mixer must not hide the others' numbers
            traceback.print_exc()
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            checks.append({"mixer": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"{name}: {time.time() - t0:.0f} s (includes compilation)", flush=True)
        save(args.out, checks, timings)

    print_table(checks, timings, torch.cuda.get_device_name(), args.time_d_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
