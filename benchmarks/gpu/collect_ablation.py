"""Collect the ablation runs (benchmarks/gpu/ablation.sh) into a table and one picture.

    python benchmarks/gpu/collect_ablation.py RUNS_DIR --out OUT_DIR
    python benchmarks/gpu/collect_ablation.py --merge seed0/ablation.json seed1/ablation.json --out OUT_DIR
Reads RUNS_DIR/<schedule>_seed<k>/eval.json and samples.png; writes OUT_DIR/ablation.json,
OUT_DIR/ablation.md (mean +- std over seeds) and OUT_DIR/ablation_grids.png (seed 0 grids side by side).
--merge joins the ablation.json files of runs made in different calls (a later file's row for the same
config and seed replaces an earlier one; rows without a result are dropped when another has one).
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
    ap.add_argument("runs", nargs="?")
    ap.add_argument("--merge", nargs="+", metavar="ABLATION_JSON", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not args.runs and not args.merge:
        ap.error("give RUNS_DIR or --merge FILES")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(Path(args.runs)) if args.runs else merge([Path(f) for f in args.merge])
    write(rows, out)
    if args.runs:
        grids(Path(args.runs), out)


def merge(files: list[Path]) -> list[dict]:
    by_key: dict[tuple[str, int], dict] = {}
    for f in files:
        for r in json.loads(f.read_text()):
            key = (r["config"], r["seed"])
            if "fid" in r or key not in by_key or "fid" not in by_key[key]:
                by_key[key] = r
    return sorted(by_key.values(), key=lambda r: (r["config"], r["seed"]))


def collect(runs: Path) -> list[dict]:
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
    return rows


def write(rows: list[dict], out: Path) -> None:
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


def grids(runs: Path, out: Path) -> None:
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
