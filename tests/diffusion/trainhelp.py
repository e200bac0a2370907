"""Helpers shared by the trainer / checkpoint / CLI / DDP tests: a tiny image folder and a tiny config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

# A mixer that every install has and that is fast on CPU; the tests are about the trainer, not mixers.
TEST_MIXER = "attention"


def make_image_folder(root: Path, per_class: int = 12, size: int = 16) -> Path:
    """Two classes of 16x16 grayscale PNGs: bright squares ("square") and horizontal stripes ("stripes")."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("square", "stripes"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.zeros((size, size), dtype=np.uint8)
            if cls == "square":
                a = rng.integers(2, 6)
                img[a : a + 8, a : a + 8] = 220
            else:
                img[rng.integers(0, 2) :: 3] = 200
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
    return root


def tiny_config(data_root: Path, out_dir: Path, **sections: Any) -> dict[str, Any]:
    """A config dict (YAML-able) for a model of a few thousand parameters on the tiny image folder."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "data": {"name": "image-folder", "root": str(data_root), "image_size": 16, "kwargs": {"channels": 1}},
        "model": {"preset": "zigma-T/2", "mixer": TEST_MIXER, "schedule": "zigzag-8", "hidden_size": 16,
                  "depth": 2, "patch_size": 4, "class_dropout_prob": 0.3},
        "optim": {"lr": 3e-3, "grad_clip": 1.0, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 8, "log_every": 1, "ckpt_every": 0, "ema_decay": 0.9},
        "sample": {"sampler": "euler", "steps": 3, "per_class": 3},
        "eval": {"at_end": False, "n": 16, "batch_size": 16},
        "logging": {"out_dir": str(out_dir), "progress": False, "tensorboard": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def csv_losses(path: Path) -> list[tuple[int, str]]:
    """(step, loss as written) of a metrics.csv: compared as strings, i.e. bit for bit."""
    import csv

    with open(path, newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def free_port() -> int:
    """A TCP port free on this machine now (for torchrun's --master_port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

