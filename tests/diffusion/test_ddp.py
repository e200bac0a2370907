"""Two processes on CPU (gloo) through torchrun: identical parameters after training on both ranks,
different data shards, and a logged loss that is the all-reduced mean of the ranks' losses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from trainhelp import free_port, make_image_folder, tiny_config

WORKER = textwrap.dedent('''
    import json, sys, torch
    from zigscan.diffusion.config import config_from_dict
    from zigscan.diffusion.trainer import Trainer
    cfg = config_from_dict(json.load(open(sys.argv[1])))
    t = Trainer(cfg, sys.argv[2])
    first = t.next_indices().tolist(); t.epoch, t.pos = 0, 0  # this rank's shard of the first batch
    t.train()
    r = t.dist.rank
    torch.save({k: v.clone() for k, v in t.model.state_dict().items()}, f"{sys.argv[2]}/params_rank{r}.pt")
    json.dump({"history": t.history, "first": first, "world": t.dist.world_size}, open(f"{sys.argv[2]}/hist_rank{r}.json", "w"))
    t.close()
''')



@pytest.mark.slow
def test_two_process_gloo(tmp_path):
    import torch

    data = make_image_folder(tmp_path / "imgs")
    cfg = tiny_config(data, tmp_path, train={"steps": 3, "batch_size": 8, "device": "cpu"})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    run = tmp_path / "run"
    run.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(run)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    p0, p1 = torch.load(run / "params_rank0.pt"), torch.load(run / "params_rank1.pt")
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    h0, h1 = (json.loads((run / f"hist_rank{r}.json").read_text()) for r in (0, 1))
    assert h0["world"] == 2
    assert set(h0["first"]).isdisjoint(h1["first"]) and len(h0["first"]) == len(h1["first"]) == 4
    for a, b in zip(h0["history"], h1["history"]):
        assert a["loss"] == b["loss"]  # the same all-reduced number on both ranks
        assert a["loss"] == pytest.approx((a["loss_rank"] + b["loss_rank"]) / 2, rel=1e-12)
        assert a["loss_rank"] != b["loss_rank"]  # ranks saw different data and noise
    # only rank 0 wrote the run files
    assert (run / "metrics.csv").exists() and (run / "checkpoints" / "latest").exists()
