"""Plot bench_speed.py results: step time and peak memory vs tokens (batch 1), and zigzag-K vs parallel-K.

    python benchmarks/gpu/plot_speed.py benchmarks/results/bench_speed_run3.jsonl --out benchmarks/results/speed.png
"""

from __future__ import annotations

import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
    main_rows = [r for r in rows if r.get("suite") == "main" and r["batch"] == 1 and not math.isnan(r["ms"])]
    order = [r for r in rows if r.get("suite") == "order"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for mixer in sorted({r["mixer"] for r in main_rows}):
        rs = sorted((r for r in main_rows if r["mixer"] == mixer), key=lambda r: r["tokens"])
        label = "DiT-B/2 (attention)" if mixer == "attention" else f"ZigMa-B/2 ({mixer}, zigzag-8)"
        axes[0].plot([r["tokens"] for r in rs], [r["ms"] for r in rs], "o-", label=label)
        axes[1].plot([r["tokens"] for r in rs], [r["peak_GiB"] for r in rs], "o-", label=label)
    for ax, what in zip(axes[:2], ["training step (ms), bf16, batch 1", "peak memory (GiB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    for kind, style in (("zigzag", "o-"), ("parallel", "s--")):
        rs = sorted((r for r in order if r["kind"] == kind), key=lambda r: r["K"])
        axes[2].plot([r["K"] for r in rs], [r["ms"] for r in rs], style,
                     label=f"{kind}-K ({'one Mamba, K orders over layers' if kind == 'zigzag' else 'K Mambas per block'})")
    axes[2].set_xlabel("K (scan directions)")
    axes[2].set_title(f"order receptive field, {order[0]['tokens'] if order else '?'} tokens: step (ms)")
    axes[2].grid(True, alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
