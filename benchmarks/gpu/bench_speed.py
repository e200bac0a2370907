"""Training-step speed and peak memory of ZigMa vs DiT on one GPU (the paper's Figure 4, and more).

    python benchmarks/gpu/bench_speed.py --suite main      # mixers x token counts x batch x compiled or not
    python benchmarks/gpu/bench_speed.py --suite ab        # zigzag-8 vs sweep, interleaved steps (>= 20 each)
    python benchmarks/gpu/bench_speed.py --suite order     # zigzag-K vs parallel-K, K = 1..8
    python benchmarks/gpu/bench_speed.py --suite overhead  # zigzag-8 vs sweep, share of time in gathers
    python benchmarks/gpu/bench_speed.py --suite layer     # one block: Mamba layer vs DiT layer (B=1, D=768)

main: ZigMa-B/2 (24 layers, no MLP, zigzag-8) with each mixer against DiT-B/2 twice: at DiT's own depth 12
(about equal parameters) and at ZigMa's depth 24 (same width and depth, as the issue asks); parallel-K runs
K Mambas per block over the sweep schedule (K times the mixer parameters). The table printed last gives
each ZigMa row's speed-up over both DiTs at the same tokens and batch. Mamba takes mamba-ssm's fused
``mamba_inner_fn`` when causal-conv1d is installed; --no-fused-conv forces the unfused path (PyTorch conv1d)
for an A/B on the same machine. Each row records which path ran (``fused_conv1d``).

--compile none,regional times each model eager and with every block compiled (``torch.compile`` per block,
"regional compilation": one compile serves all blocks of a model). Model FLOPs are 3x the forward FLOPs that
``torch.utils.flop_counter`` counts (GEMMs, SDPA, convs, and zigscan's Mamba custom ops through their formulas
in mamba_ops; fla's Triton kernels are not counted, only their projections, so gla/mamba2 TFLOP/s are lower
bounds); the share is of --peak-tflops (790: an 8192^3 bf16 GEMM measured on this workplace's H200s).

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
PEAK_TFLOPS = 790.0  # dense bf16 GEMM measured on an H200 here (8192^3, random data); the datasheet says ~990


def environment() -> dict:
    """Card, versions and commit recorded with every row (commit: $ZIGSCAN_COMMIT or git, else "unknown")."""
    import importlib
    import subprocess

    env = {"card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    for mod in ("triton", "mamba_ssm", "causal_conv1d", "fla"):
        try:
            env[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception:
            env[mod] = None
    commit = os.environ.get("ZIGSCAN_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
        except OSError:
            commit = None
    env["commit"] = commit or "unknown"
    return env


def model_flops(model: torch.nn.Module, batch: int, side: int) -> float:
    """FLOPs of one training step: 3 x the forward FLOPs counted by torch.utils.flop_counter (bf16 autocast)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 4, side, side, device="cuda")
    t, y = torch.rand(batch, device="cuda"), torch.randint(0, 1000, (batch,), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), FlopCounterMode(display=False) as fc:
        model(x, t, y)
    return 3.0 * fc.get_total_flops()


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: every block compiled in place (same code, so one compile serves all of them)."""
    for block in model.blocks:
        block.compile()


def step_time(model: torch.nn.Module, batch: int, side: int, *, warmup: int, reps: int) -> dict:
    x = torch.randn(batch, 4, side, side, device="cuda")
    t = torch.rand(batch, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t, y)  # (B, 4, side, side)
        out.float().square().mean().backward()

    return time_fn(step, warmup=warmup, reps=reps, batch=batch)


def time_fn(step, *, warmup: int, reps: int, batch: int = 1) -> dict:
    """Median CUDA-event time of ``step()`` after ``warmup`` calls, and peak memory over the timed calls."""
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


def fused_conv1d(mixer: str | None) -> bool | None:
    """Whether this mixer's Mamba takes the fused causal-conv1d path (None: not a Mamba mixer)."""
    if mixer is None or not (mixer in ("mamba", "mamba2", "bimamba") or mixer.startswith("parallel-")):
        return None
    from zigscan.backbones.mixers import mamba as mamba_mod

    return mamba_mod._causal_conv1d_fn() is not None


def disable_fused_conv() -> None:
    """Benchmark A/B only: make Mamba and Mamba2 behave as if causal-conv1d were not installed."""
    from zigscan.backbones.mixers import mamba as mamba_mod
    from zigscan.backbones.mixers import mamba2 as mamba2_mod

    mamba_mod._causal_conv1d_fn = mamba2_mod._causal_conv1d_fn = lambda: None


def measure(preset: str, mixer: str | None, schedule: str | None, tokens: int, batch: int, args, *,
            compiled: bool = False, **extra) -> dict:
    row = {"preset": preset, "mixer": mixer, "schedule": schedule, "tokens": tokens, "batch": batch,
           "compiled": compiled, **extra}
    overrides = {"depth": extra["depth"]} if "depth" in extra else {}
    if fused_conv1d(mixer) is not None:
        row["fused_conv1d"] = fused_conv1d(mixer)
    torch.cuda.empty_cache()
    model = None
    try:
        with torch.device("cuda"):  # build on the GPU: initialising 100M+ parameters on the CPU is slow
            model = create_model(preset, mixer=mixer, schedule=schedule, input_size=TOKENS_TO_INPUT[tokens],
                                 in_channels=4, num_classes=1000, **overrides)
        model.to("cuda")  # (a no-op move: the mixers decide their kernel path here, before any compile)
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        row["depth"] = len(model.blocks)
        flops = model_flops(model, batch, TOKENS_TO_INPUT[tokens])
        t0 = time.time()
        if compiled:
            compile_blocks(model)
        row.update(step_time(model, batch, TOKENS_TO_INPUT[tokens], warmup=args.warmup + (2 if compiled else 0),
                             reps=args.reps))
        row["warmup_s"] = time.time() - t0  # includes compilation when compiled
        row["tflops"] = flops / row["ms"] / 1e9
        row["peak_share"] = row["tflops"] / args.peak_tflops
    except torch.cuda.OutOfMemoryError:
        row.update(ms=float("nan"), imgs_per_s=float("nan"), peak_GiB=float("nan"), oom=True)
    except Exception as exc:  # one failing configuration must not hide the others
        row.update(ms=float("nan"), imgs_per_s=float("nan"), peak_GiB=float("nan"), error=f"{type(exc).__name__}: {exc}"[:200])
    finally:
        model = None
        torch.cuda.empty_cache()
        if compiled:
            torch._dynamo.reset()
    row.update(ENV)
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:  # row by row: a run cut short keeps what it measured
        f.write(json.dumps(row) + "\n")
    return row


ENV: dict = {}


def ab_time(tokens: int, args) -> dict:
    """zigzag-8 vs sweep (ZigMa-B/2, mamba), steps interleaved A B A B ... (>= 20 each): the ratio of medians."""
    side = TOKENS_TO_INPUT[tokens]
    with torch.device("cuda"):
        models = {s: create_model(f"zigma-{args.size}/2", mixer="mamba", schedule=s, input_size=side, in_channels=4,
                                  num_classes=1000).to("cuda") for s in ("zigzag-8", "sweep")}
    x = torch.randn(1, 4, side, side, device="cuda")
    t, y = torch.rand(1, device="cuda"), torch.randint(0, 1000, (1,), device="cuda")
    times: dict[str, list[float]] = {s: [] for s in models}
    for i in range(2 * (args.ab_steps + 3)):
        s = "zigzag-8" if i % 2 == 0 else "sweep"
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = models[s](x, t, y)
        out.float().square().mean().backward()
        b.record()
        torch.cuda.synchronize()
        if i >= 6:  # three warm-up steps each
            times[s].append(a.elapsed_time(b))
    med = {s: sorted(v)[len(v) // 2] for s, v in times.items()}
    row = {"suite": "ab", "preset": f"zigma-{args.size}/2", "mixer": "mamba", "tokens": tokens, "batch": 1,
           "steps_each": len(times["sweep"]), "ms_zigzag8": med["zigzag-8"], "ms_sweep": med["sweep"],
           "ratio": med["zigzag-8"] / med["sweep"], **ENV}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def layer_time(mixer: str, tokens: int, args) -> dict:
    """Forward + backward of ONE block at B=1, D=768 under bf16 autocast: a Mamba layer (ZigMa block, no MLP)
    or a DiT layer (attention + MLP). The issue's reference: 1.7x at 16,384 and 6.4x at 65,536 tokens."""
    preset = "dit-B/2" if mixer == "attention" else "zigma-B/2"
    row = {"suite": "layer", "preset": preset, "mixer": mixer, "tokens": tokens, "batch": 1}
    if fused_conv1d(mixer) is not None:
        row["fused_conv1d"] = fused_conv1d(mixer)
    torch.cuda.empty_cache()
    try:
        with torch.device("cuda"):
            block = create_model(preset, mixer=mixer, depth=1, input_size=TOKENS_TO_INPUT[tokens], in_channels=4,
                                 num_classes=1000).blocks[0]
        x = torch.randn(1, tokens, block.norm1.normalized_shape[0], device="cuda", requires_grad=True)
        c = torch.randn(1, x.shape[-1], device="cuda")

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = block(x, c)  # (1, L, D)
            out.float().square().mean().backward()

        row.update(time_fn(step, warmup=args.warmup, reps=args.reps))
    except torch.cuda.OutOfMemoryError:
        row.update(ms=float("nan"), peak_GiB=float("nan"), oom=True)
    except Exception as exc:  # one failing configuration must not hide the others
        row.update(ms=float("nan"), peak_GiB=float("nan"), error=f"{type(exc).__name__}: {exc}"[:200])
    block = None
    torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def speedups(rows: list[dict]) -> list[dict]:
    """For each ZigMa row of the main suite, its speed-up over every DiT row (by depth) at the same tokens and
    batch: ``{"vs_dit_d12": DiT ms / ZigMa ms, "mem_vs_dit_d12": ZigMa GiB / DiT GiB, ...}`` merged into a copy
    of the row. Layer-suite rows get ``vs_dit_layer`` the same way. Each DiT is taken at its best: of its eager
    and compiled rows, the fastest (failed rows, ms NaN, never count)."""
    dits: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("mixer") == "attention" and r.get("suite") in ("main", "layer") and r.get("ms") == r.get("ms"):
            key = "layer" if r["suite"] == "layer" else f"d{r.get('depth', '?')}"
            best = dits.setdefault((r["suite"], r["tokens"], r["batch"]), {})
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    out = []
    for r in rows:
        r = dict(r)
        if r.get("mixer") != "attention" and r.get("suite") in ("main", "layer"):
            for key, d in dits.get((r["suite"], r["tokens"], r["batch"]), {}).items():
                r[f"vs_dit_{key}"] = d["ms"] / r["ms"]
                r[f"mem_vs_dit_{key}"] = r["peak_GiB"] / d["peak_GiB"]
        out.append(r)
    return out


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
    ap.add_argument("--suite", choices=["main", "ab", "order", "overhead", "layer"], default="main")
    ap.add_argument("--mixers", default="attention,mamba,mamba2,gla")
    ap.add_argument("--compile", default="none,regional", help="none and/or regional (every block torch.compile'd)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the card's bf16 peak for the share")
    ap.add_argument("--max-batched-tokens", type=int, default=16384, help="batches > 1 only up to this many tokens")
    ap.add_argument("--ab-steps", type=int, default=25, help="timed steps of each schedule in --suite ab")
    ap.add_argument("--dit-depths", default="12,24", help="DiT depths for the attention rows: 12 is DiT-B, "
                    "24 is ZigMa-B's depth")
    ap.add_argument("--no-fused-conv", action="store_true", help="Mamba without causal-conv1d's fused path (A/B)")
    ap.add_argument("--tokens", default="4096,16384,65536")
    ap.add_argument("--batches", default="1,4", help="batch 1 as in the paper, and a larger batch")
    ap.add_argument("--size", default="B", help="model size letter (S, B, L, XL)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench_speed.jsonl"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    ENV.update(environment())
    print(f"device: {ENV}", flush=True)
    if args.no_fused_conv:
        disable_fused_conv()
    rows: list[dict] = []
    t0 = time.time()
    size = args.size
    if args.suite == "main":
        modes = [m == "regional" for m in args.compile.split(",")]
        for tokens in [int(v) for v in args.tokens.split(",")]:  # token count by token count: a cut run has whole rows
            for batch in [int(v) for v in args.batches.split(",")]:
                if batch > 1 and tokens > args.max_batched_tokens:
                    continue  # batch 4 at 65k tokens: minutes per DiT step; batch 1 shows the trend
                for mixer in args.mixers.split(","):
                    for compiled in modes:
                        if mixer == "attention":
                            for depth in [int(v) for v in args.dit_depths.split(",")]:
                                rows.append(measure(f"dit-{size}/2", mixer, None, tokens, batch, args, suite="main",
                                                    depth=depth, compiled=compiled))
                            continue
                        schedule = "sweep" if mixer.startswith("parallel-") else "zigzag-8"
                        rows.append(measure(f"zigma-{size}/2", mixer, schedule, tokens, batch, args, suite="main",
                                            compiled=compiled))
    elif args.suite == "ab":
        for tokens in [int(v) for v in args.tokens.split(",")]:
            rows.append(ab_time(tokens, args))
    elif args.suite == "layer":
        for tokens in [int(v) for v in args.tokens.split(",")]:
            for mixer in args.mixers.split(","):
                rows.append(layer_time(mixer, tokens, args))
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
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    """The results as a table; ZigMa rows end with their speed-up (x) and memory ratio over each DiT at its best."""
    for r in speedups(rows):
        if "gather_share" in r:
            print(f"gathers: {r['mixer']:10s} {r['schedule']:9s} tokens={r['tokens']:6d} share={100 * r['gather_share']:.2f}%")
            continue
        if r.get("suite") == "ab":
            print(f"A/B {r['preset']} mamba tokens={r['tokens']:6d}: zigzag-8 {r['ms_zigzag8']:.1f} ms, sweep "
                  f"{r['ms_sweep']:.1f} ms, ratio {r['ratio']:.3f} ({r['steps_each']} interleaved steps each)")
            continue
        sched = r.get("schedule")
        sched = sched if isinstance(sched, str) or sched is None else f"zigzag-{len(sched)}"
        name = r["preset"] + (f" d{r['depth']}" if r.get("depth") and r["mixer"] == "attention" else "")
        name += " layer" if r.get("suite") == "layer" else ""
        ratios = " ".join(f"{r[k]:.2f}x/{r['mem_' + k]:.2f}mem {k[7:]}" for k in sorted(r) if k.startswith("vs_dit_"))
        flops = f" {r['tflops']:6.1f} TFLOP/s {100 * r['peak_share']:4.1f}%" if r.get("tflops") else ""
        print(f"{name:17s} {r['mixer']:11s} {str(sched):9s} tokens={r['tokens']:6d} B={r['batch']}"
              + (" compiled" if r.get("compiled") else " eager   " if "compiled" in r else "")
              + f" {r['ms']:9.1f} ms {r['peak_GiB']:7.2f} GiB" + flops
              + ("" if r.get("fused_conv1d") is None else f" fused={'y' if r['fused_conv1d'] else 'n'}")
              + (f"  vs DiT: {ratios}" if ratios else "")
              + (" OOM" if r.get("oom") else "") + (f" ERR {r['error']}" if r.get("error") else ""))


if __name__ == "__main__":
    sys.exit(main())
