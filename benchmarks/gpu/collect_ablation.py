"""Collect the ablation runs (benchmarks/gpu/ablation.sh) into a table and one picture.

    python benchmarks/gpu/collect_ablation.py RUNS_DIR --out OUT_DIR
Reads RUNS_DIR/<schedule>_seed<k>/eval.json and samples.png; writes OUT_DIR/ablation.json,
OUT_DIR/ablation.md (mean +- std over seeds) and OUT_DIR/ablation_grids.png (seed 0 grids side by side).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["sweep", "zigzag-1", "zigzag-2", "zigzag-8", "hilbert-8", "dit"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        name, _, seed = run.name.rpartition("_seed")
        ev = run / "eval.json"
        row = {"config": name, "seed": int(seed), "run": run.name}
        if ev.exists():
            row.update(json.loads(ev.read_text()))
        else:
            log = runs / f"{run.name}.log"
            row["error"] = log.read_text()[-400:] if log.exists() else "no eval.json"
        rows.append(row)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    lines = ["| config | seeds | FID (mean +- std) | KID (mean +- std) |", "| --- | --- | --- | --- |"]
    for cfg in ORDER:
        got = [r for r in rows if r["config"] == cfg and "fid" in r]
        if not got:
            lines.append(f"| {cfg} | 0 | (no result) | |")
            continue
        fid = [r["fid"] for r in got]
        kid = [r["kid"] for r in got]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {cfg} | {len(got)} | {statistics.mean(fid):.2f} +- {sd(fid):.2f} "
                     f"| {statistics.mean(kid):.3f} +- {sd(kid):.3f} |")
    table = "\n".join(lines)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    grids = [(cfg, runs / f"{cfg}_seed0" / "samples.png") for cfg in ORDER]
    grids = [(c, p) for c, p in grids if p.exists()]
    if grids:
        fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.4))
        for ax, (cfg, p) in zip(axes if len(grids) > 1 else [axes], grids):
            ax.imshow(mpimg.imread(p))
            ax.set_title(cfg)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "ablation_grids.png", dpi=110)


if __name__ == "__main__":
    main()
