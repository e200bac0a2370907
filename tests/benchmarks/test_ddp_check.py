"""benchmarks/gpu/ddp_check.py (the script behind the NCCL run on 2 GPUs) on CPU with gloo: it trains
under torchrun and reports whether every rank ends with the same weights."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "diffusion"))
from trainhelp import free_port, make_image_folder, tiny_config, write_config  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "ddp_check.py"



@pytest.mark.slow
def test_ddp_check_reports_ranks_in_sync(tmp_path):
    cfg = tiny_config(make_image_folder(tmp_path / "imgs"), tmp_path, train={"steps": 3, "device": "cpu"})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(SCRIPT), str(path), "--set", "train.log_every=1", "--out", str(run)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((run / "ddp_check.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["steps"] == 3
    assert report["ranks_in_sync"] is True and len(set(report["digests"])) == 1
    assert report["steps_per_s_last"] > 0 and report["final_loss"] > 0
    assert "ddp_check {" in p.stdout


def test_weights_digest_sees_one_changed_bit():
    import torch

    spec = importlib.util.spec_from_file_location("_ddp_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert mod.weights_digest(a) == mod.weights_digest(b)
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(1.0))
    assert mod.weights_digest(a) != mod.weights_digest(b)
