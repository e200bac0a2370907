"""Multi-GPU training check: the trainer under torchrun with NCCL, ranks in sync, throughput.

    torchrun --nproc_per_node=2 benchmarks/gpu/ddp_check.py CONFIG [--set key=value ...] [--out RUN_DIR]

Trains CONFIG exactly as ``zigscan train`` does, then, on every rank, hashes every parameter and
buffer of the model and of its EMA copy and all-gathers the hashes: rank 0 prints whether all ranks
hold bit-identical weights (DDP must keep them so), the backend, the steps/s of the last logged
interval and the final loss, writes them to RUN_DIR/ddp_check.json, and exits 1 when ranks differ.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time

import torch
import torch.distributed as dist

from zigscan.diffusion.config import load_config
from zigscan.diffusion.trainer import Trainer


def weights_digest(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None, help="run folder (default: the config's)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    trainer = Trainer(cfg, args.out, resume=None)
    t0 = time.perf_counter()
    try:
        result = trainer.train()
        seconds = time.perf_counter() - t0
        digest = weights_digest(trainer.model, trainer.ema)  # (trainer.model is the module DDP wraps)
        ranks = [None] * trainer.dist.world_size
        if trainer.dist.distributed:
            dist.all_gather_object(ranks, digest)
        else:
            ranks = [digest]
        if trainer.dist.is_main:
            rows = list(csv.DictReader(open(trainer.run_dir / "metrics.csv")))
            report = {
                "world_size": trainer.dist.world_size,
                "backend": dist.get_backend() if dist.is_initialized() else "none",
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "global_batch": cfg.train.batch_size, "steps": result["step"],
                "train_seconds": round(seconds, 1),
                "steps_per_s_last": float(rows[-1]["steps_per_s"]) if rows else None,
                "final_loss": result.get("loss"), "ranks_in_sync": len(set(ranks)) == 1,
                "digests": [d[:16] for d in ranks],
            }
            (trainer.run_dir / "ddp_check.json").write_text(json.dumps(report, indent=1))
            print("ddp_check " + json.dumps(report), flush=True)
        in_sync = len(set(ranks)) == 1
    finally:
        trainer.close()
    return 0 if in_sync else 1


if __name__ == "__main__":
    sys.exit(main())
