"""Training-step speed and peak memory of ZigMa vs DiT on one GPU (the paper's Figure 4, and more).

    python benchmarks/gpu/bench_speed.py --suite main      # mixers x token counts, batch 1 and a real batch
    python benchmarks/gpu/bench_speed.py --suite order     # zigzag-K vs parallel-K, K = 1..8
    python benchmarks/gpu/bench_speed.py --suite overhead  # zigzag-8 vs sweep, share of time in gathers

One training step = forward + backward of the whole network under bf16 autocast (AdamW step excluded;
it is the same for every model of equal size). Timing: CUDA events, median of --reps after --warmup
steps; memory: torch.cuda.max_memory_allocated over the timed steps. Results are appended as JSON lines
to $OUT/bench_speed.jsonl (or --out) and a table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from zigscan.backbones import create_model

TOKENS_TO_INPUT = {1024: 64, 4096: 128, 16384: 256, 65536: 512}  # latent side for patch 2, in_channels 4


def step_time(model: torch.nn.Module, batch: int, side: int, *, warmup: int, reps: int) -> dict:
    x = torch.randn(batch, 4, side, side, device="cuda")
    t = torch.rand(batch, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, y)  # (B, 4, side, side)
        out.float().square().mean().backward()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    ms = times[len(times) // 2]
    return {"ms": ms, "imgs_per_s": 1000.0 * batch / ms, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30}


def measure(preset: str, mixer: str | None, schedule: str | None, tokens: int, batch: int, args, **extra) -> dict:
    row = {"preset": preset, "mixer": mixer, "schedule": schedule, "tokens": tokens, "batch": batch, **extra}
    torch.cuda.empty_cache()
    try:
        with torch.device("cuda"):  # build on the GPU: initialising 100M+ parameters on the CPU is slow
            model = create_model(preset, mixer=mixer, schedule=schedule, input_size=TOKENS_TO_INPUT[tokens],
                                 in_channels=4, num_classes=1000)
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        row.update(step_time(model, batch, TOKENS_TO_INPUT[tokens], warmup=args.warmup, reps=args.reps))
    except torch.cuda.OutOfMemoryError:
        row.update(ms=float("nan"), imgs_per_s=float("nan"), peak_GiB=float("nan"), oom=True)
    except Exception as exc:  # one failing configuration must not hide the others
        row.update(ms=float("nan"), imgs_per_s=float("nan"), peak_GiB=float("nan"), error=f"{type(exc).__name__}: {exc}"[:200])
    finally:
        model = None
        torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:  # row by row: a run cut short keeps what it measured
        f.write(json.dumps(row) + "\n")
    return row


# CUDA kernels that move tokens by an index: what a scan permutation launches (x[:, perm], its inverse in the
# backward pass, index_select / gather / scatter). Matched on the kernel's own name, not on its template
# arguments: PyTorch's depthwise conv kernels carry "IndexBoundsCheck" in theirs, and an earlier version of
# this script that matched "index" anywhere counted Mamba's conv1d (14% of the step) as gathers.
PERMUTATION_KERNELS = ("gather", "indexselect", "index_elementwise", "index_put", "index_kernel", "scatter")


def is_permutation_kernel(name: str) -> bool:
    head = name.replace("(anonymous namespace)", "").split("<", 1)[0].split("(", 1)[0].lower()  # no template args
    return any(k in head for k in PERMUTATION_KERNELS)


def gather_share(preset: str, mixer: str, schedule: str, tokens: int, batch: int, args) -> dict:
    """Share of CUDA time spent in index/gather kernels (the scan permutations) in one training step."""
    from torch.profiler import ProfilerActivity, profile

    with torch.device("cuda"):
        model = create_model(preset, mixer=mixer, schedule=schedule, input_size=TOKENS_TO_INPUT[tokens],
                             in_channels=4, num_classes=1000)
    step_time(model, batch, TOKENS_TO_INPUT[tokens], warmup=2, reps=1)
    x = torch.randn(batch, 4, TOKENS_TO_INPUT[tokens], TOKENS_TO_INPUT[tokens], device="cuda")
    t, y = torch.rand(batch, device="cuda"), torch.randint(0, 1000, (batch,), device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, y)
        out.float().square().mean().backward()
        torch.cuda.synchronize()
    total = gathers = 0.0
    for ev in prof.key_averages():
        cuda_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if ev.key.startswith("aten::") or cuda_us <= 0:
            continue  # kernels only (aten ops would count kernel time twice)
        total += cuda_us
        if is_permutation_kernel(ev.key):
            gathers += cuda_us
    row = {"suite": "gather-share", "mixer": mixer, "schedule": schedule, "tokens": tokens, "batch": batch,
           "gather_share": gathers / max(total, 1e-9), "kernel_ms": total / 1000}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["main", "order", "overhead"], default="main")
    ap.add_argument("--mixers", default="attention,mamba,mamba2,bimamba,gla,rwkv6")
    ap.add_argument("--tokens", default="1024,4096,16384,65536")
    ap.add_argument("--batches", default="1,8", help="batch 1 as in the paper, and a realistic batch")
    ap.add_argument("--size", default="B", help="model size letter (S, B, L, XL)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_speed.jsonl"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    t0 = time.time()
    size = args.size
    if args.suite == "main":
        for mixer in args.mixers.split(","):  # mixer by mixer: a run cut short has whole mixers
            for tokens in [int(v) for v in args.tokens.split(",")]:
                for batch in [int(v) for v in args.batches.split(",")]:
                    if batch > 1 and tokens > 16384:
                        continue  # a realistic batch at 65k tokens does not fit DiT-B; batch 1 shows the trend
                    preset = f"dit-{size}/2" if mixer == "attention" else f"zigma-{size}/2"
                    schedule = None if mixer == "attention" else "zigzag-8"
                    rows.append(measure(preset, mixer, schedule, tokens, batch, args, suite="main"))
    elif args.suite == "order":
        tokens = int(args.tokens.split(",")[0])
        for k in range(1, 9):
            rows.append(measure(f"zigma-{size}/2", "mamba", f"zigzag-{k}" if k in (1, 2, 8) else
                                [f"zigzag-s{i}" for i in range(k)], tokens, 1, args, suite="order", K=k, kind="zigzag"))
            rows.append(measure(f"zigma-{size}/2", f"parallel-{k}", "sweep", tokens, 1, args, suite="order",
                                K=k, kind="parallel"))
    else:
        for tokens in [int(v) for v in args.tokens.split(",")]:
            for mixer in args.mixers.split(","):
                if mixer == "attention":
                    continue
                for schedule in ("sweep", "zigzag-8"):
                    rows.append(measure(f"zigma-{size}/2", mixer, schedule, tokens, 1, args, suite="overhead"))
            rows.append(gather_share(f"zigma-{size}/2", "mamba", "zigzag-8", tokens, 1, args))
    print(f"\n{args.suite} suite on {torch.cuda.get_device_name()} ({time.time() - t0:.0f} s)")
    for r in rows:
        if "gather_share" in r:
            print(f"gathers: {r['mixer']:10s} {r['schedule']:9s} tokens={r['tokens']:6d} share={100 * r['gather_share']:.2f}%")
            continue
        sched = r["schedule"] if isinstance(r["schedule"], str) or r["schedule"] is None else f"zigzag-{len(r['schedule'])}"
        print(f"{r['preset']:11s} {r['mixer']:11s} {str(sched):9s} tokens={r['tokens']:6d} B={r['batch']} "
              f"{r['ms']:9.1f} ms {r['imgs_per_s']:8.2f} img/s {r['peak_GiB']:7.2f} GiB"
              + (" OOM" if r.get("oom") else "") + (f" ERR {r['error']}" if r.get("error") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
