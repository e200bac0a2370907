"""Which stage of a mixer's kernel path fails on this GPU: each stage runs in its own process.

    python benchmarks/gpu/probe_kernel.py --mixer retnet [--lengths 63,1000] [--dtypes bf16,fp32]

A kernel that faults (CUDA "illegal memory access") takes its process's CUDA context with it, so one
process cannot tell a forward fault from a backward one, nor go on to the next dtype. Here every
(stage, dtype, length) runs in a fresh child with CUDA_LAUNCH_BLOCKING=1, so the error is raised at the
launch that faulted; the table printed last names the stage, the result and the innermost upstream frame.
Stages: ``fwd-nograd`` (forward under torch.no_grad, what sampling runs) and ``fwd+bwd`` (training).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

STAGES = ("fwd-nograd", "fwd+bwd")


def child(mixer: str, stage: str, dtype: str, L: int, d_model: int) -> None:
    import torch

    from zigscan.backbones.mixers import get_mixer

    torch.manual_seed(0)
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    m = get_mixer(mixer, d_model, impl="kernel").cuda().to(dt)
    x = torch.randn(2, L, d_model, device="cuda", dtype=dt, requires_grad=stage != "fwd-nograd")
    if stage == "fwd-nograd":
        with torch.no_grad():
            y = m(x)
    else:
        y = m(x)
        print("forward done", flush=True)
        y.float().square().mean().backward()
    torch.cuda.synchronize()
    assert torch.isfinite(y).all(), "non-finite output"
    print("PASS", flush=True)


def innermost_frame(text: str) -> str:
    """The last traceback frame inside fla / mamba_ssm / zigscan, e.g. 'fla/ops/common/chunk_o.py:812 in f'."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    for path, line, fn in reversed(frames):
        m = re.search(r"((?:fla|mamba_ssm|zigscan|backbones)/.*)", path)
        if m:
            return f"{m.group(1)}:{line} in {fn}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixer", required=True)
    ap.add_argument("--lengths", default="63,1000")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per child (the first compiles)")
    ap.add_argument("--child", nargs=3, metavar=("STAGE", "DTYPE", "L"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.mixer, args.child[0], args.child[1], int(args.child[2]), args.d_model)
        return 0
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONUNBUFFERED="1")
    rows = []
    for dtype in args.dtypes.split(","):
        for L in [int(v) for v in args.lengths.split(",")]:
            for stage in STAGES:
                t0 = time.time()
                cmd = [sys.executable, __file__, "--mixer", args.mixer, "--d-model", str(args.d_model),
                       "--child", stage, dtype, str(L)]
                try:
                    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                    out = p.stdout + p.stderr
                    errors = [ln for ln in out.splitlines() if re.match(r"^\w*(Error|Exception)\b", ln)]
                    result = "PASS" if "PASS" in p.stdout else (errors[-1] if errors else f"exit {p.returncode}")
                    if result != "PASS" and stage == "fwd+bwd":
                        result = ("backward: " if "forward done" in p.stdout else "forward: ") + result
                    where = "" if result == "PASS" else innermost_frame(out)
                except subprocess.TimeoutExpired:
                    result, where = f"timeout after {args.timeout} s", ""
                rows.append((stage, dtype, L, result, where, time.time() - t0))
                print(f"{args.mixer} {stage:10s} {dtype} L={L:5d} {time.time() - t0:5.0f} s  {result[:160]}  {where}",
                      flush=True)
    print(f"\n{args.mixer} kernel probe (each stage in a fresh process, CUDA_LAUNCH_BLOCKING=1)")
    for stage, dtype, L, result, where, _ in rows:
        print(f"  {stage:10s} {dtype} L={L:5d}  {'ok' if result == 'PASS' else result[:160]}"
              + (f"\n{'':30s}at {where}" if where else ""))
    return 0 if all(r[3] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
