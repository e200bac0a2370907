"""Plot bench_speed.py results: step time and peak memory vs tokens (batch 1), one layer, and zigzag-K vs parallel-K.

    python benchmarks/gpu/plot_speed.py benchmarks/results/bench_speed_*4xh200.jsonl \\
        --order benchmarks/results/bench_speed_run3.jsonl --out benchmarks/results/speed.png

Rows come from any number of JSON-lines files (later files win for the same configuration). Panels:
whole-network training step and peak memory (batch 1) for DiT-B/2 at depth 12 and 24 and ZigMa-B/2 with
each mixer; one block (Mamba layer vs DiT layer) with the speed-up written on each point; and, from
--order (or the same files), zigzag-K vs parallel-K.
"""

from __future__ import annotations

import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(r: dict) -> str:
    if r["mixer"] == "attention":
        return f"DiT-B/2, depth {r.get('depth', 12)}"
    fused = {True: "", False: ", no causal-conv1d", None: ""}[r.get("fused_conv1d")]
    sched = r.get("schedule") if isinstance(r.get("schedule"), str) else "zigzag-8"
    return f"ZigMa-B/2 {r['mixer']} ({sched}{fused})"


def load(paths: list[str]) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for path in paths:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                key = (r.get("suite"), label(r) if "mixer" in r else "", r.get("tokens"), r.get("batch"),
                       r.get("K"), r.get("kind"), str(r.get("schedule")))
                rows[key] = r
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("--order", nargs="*", default=[], help="files with the order suite (default: the same files)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="", help="e.g. the card and date of the runs")
    args = ap.parse_args(argv)
    rows = load(args.jsonl)
    ok = [r for r in rows if not math.isnan(r.get("ms", math.nan))]
    main_rows = [r for r in ok if r.get("suite") == "main" and r["batch"] == 1]
    layer = [r for r in ok if r.get("suite") == "layer"]
    order = [r for r in (load(args.order) if args.order else rows) if r.get("suite") == "order"]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    for name in sorted({label(r) for r in main_rows}):
        rs = sorted((r for r in main_rows if label(r) == name), key=lambda r: r["tokens"])
        style = "s--" if name.startswith("DiT") else "o-"
        axes[0].plot([r["tokens"] for r in rs], [r["ms"] for r in rs], style, label=name)
        axes[1].plot([r["tokens"] for r in rs], [r["peak_GiB"] for r in rs], style, label=name)
    for ax, what in zip(axes[:2], ["training step (ms), bf16, batch 1", "peak memory (GiB), batch 1"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    dit = {r["tokens"]: r for r in layer if r["mixer"] == "attention"}
    for mixer in sorted({r["mixer"] for r in layer}):
        rs = sorted((r for r in layer if r["mixer"] == mixer), key=lambda r: r["tokens"])
        name = "DiT layer (attention + MLP)" if mixer == "attention" else f"ZigMa layer ({mixer})"
        axes[2].plot([r["tokens"] for r in rs], [r["ms"] for r in rs], "s--" if mixer == "attention" else "o-",
                     label=name)
        if mixer != "attention":
            for r in rs:
                if r["tokens"] in dit:
                    axes[2].annotate(f"{dit[r['tokens']]['ms'] / r['ms']:.2f}x", (r["tokens"], r["ms"]),
                                     textcoords="offset points", xytext=(0, -12), ha="center", fontsize=8)
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("tokens")
    axes[2].set_title("one block, fwd+bwd (ms), B=1, D=768; DiT/ZigMa speed-up")
    axes[2].grid(True, which="both", alpha=0.3)
    if layer:
        axes[2].legend(fontsize=8)
    for kind, style in (("zigzag", "o-"), ("parallel", "s--")):
        rs = sorted((r for r in order if r.get("kind") == kind and not math.isnan(r["ms"])), key=lambda r: r["K"])
        axes[3].plot([r["K"] for r in rs], [r["ms"] for r in rs], style,
                     label=f"{kind}-K ({'one Mamba, K orders over layers' if kind == 'zigzag' else 'K Mambas per block'})")
    axes[3].set_xlabel("K (scan directions)")
    axes[3].set_title(f"order receptive field, {order[0]['tokens'] if order else '?'} tokens: step (ms)")
    axes[3].grid(True, alpha=0.3)
    if order:
        axes[3].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
