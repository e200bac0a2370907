"""Trainer: exact resume on CPU, EMA math, gradient clipping before the optimizer step, isolation from
the global RNG, and the files a run writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trainhelp import csv_losses, make_image_folder, tiny_config

from zigscan.diffusion.builder import lr_factor
from zigscan.diffusion.checkpoint import load_checkpoint
from zigscan.diffusion.config import ConfigError, config_from_dict
from zigscan.diffusion.trainer import Trainer, update_ema


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs"))


def _trainer(data_root, run, **sections):
    return Trainer(config_from_dict(tiny_config(data_root, run.parent, **sections)), run, resume="auto")


def test_exact_resume_reproduces_uninterrupted_run(data_root, tmp_path):
    steps = {"train": {"steps": 8, "ckpt_every": 3}}
    full = _trainer(data_root, tmp_path / "full", **steps)
    full.train()
    # interrupted at step 4 (not a checkpoint multiple), with global RNG use in between
    part = _trainer(data_root, tmp_path / "part", **steps)
    part.train(stop_at=4)
    torch.rand(1000)
    _ = torch.randn(7)
    resumed = _trainer(data_root, tmp_path / "part", **steps)
    assert resumed.step == 4 and resumed.resumed_from is not None
    resumed.train()
    a, b = csv_losses(tmp_path / "full" / "metrics.csv"), csv_losses(tmp_path / "part" / "metrics.csv")
    assert [s for s, _ in a] == list(range(1, 9))
    assert a == b  # bit for bit (strings of repr(float))
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(p, q)


def test_resume_rewrites_csv_rows_after_the_checkpoint(data_root, tmp_path):
    run = tmp_path / "run"
    t = _trainer(data_root, run, train={"steps": 6, "ckpt_every": 2})
    t.train(stop_at=3)  # saves at 2 and at 3 (interruption)
    # simulate a crash after step 3 was logged but before it was saved: drop the step-3 checkpoint
    ckpts = run / "checkpoints"
    (ckpts / "latest").write_text("step_00000002\n")
    import shutil

    shutil.rmtree(ckpts / "step_00000003")
    again = _trainer(data_root, run, train={"steps": 6, "ckpt_every": 2})
    assert again.step == 2
    again.train()
    steps = [s for s, _ in csv_losses(run / "metrics.csv")]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated step 3


def test_resume_refuses_a_different_model(data_root, tmp_path):
    run = tmp_path / "run"
    _trainer(data_root, run, train={"steps": 2}).train()
    cfg = tiny_config(data_root, tmp_path)
    cfg["model"]["hidden_size"] = 24
    with pytest.raises(ConfigError, match="model.hidden_size"):
        Trainer(config_from_dict(cfg), run, resume="auto")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(config_from_dict(tiny_config(data_root, tmp_path)), run, resume=None)


def test_same_seed_same_run_independent_of_global_rng(data_root, tmp_path):
    a = _trainer(data_root, tmp_path / "a", train={"steps": 3})
    torch.manual_seed(123)
    a.train()
    b = _trainer(data_root, tmp_path / "b", train={"steps": 3})
    torch.manual_seed(999)
    b.train()
    assert csv_losses(tmp_path / "a" / "metrics.csv") == csv_losses(tmp_path / "b" / "metrics.csv")
    c = _trainer(data_root, tmp_path / "c", train={"steps": 3, "seed": 1})
    c.train()
    assert csv_losses(tmp_path / "c" / "metrics.csv") != csv_losses(tmp_path / "a" / "metrics.csv")


def test_ema_update_math():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    model.register_buffer("count", torch.tensor(5.0))
    ema.register_buffer("count", torch.tensor(0.0))
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9)
    for e0, e, m in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * m.detach())
    assert float(ema.count) == 5.0  # buffers are copied
    update_ema(ema, model, 0.0)
    for e, m in zip(ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, m.detach())


def test_clipping_happens_before_the_optimizer_step(data_root, tmp_path):
    max_norm = 1e-3  # far below the natural gradient norm, so clipping must act
    t = _trainer(data_root, tmp_path / "clip", optim={"grad_clip": max_norm, "warmup_steps": 0})
    seen = []

    def pre_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    t.optimizer.register_step_pre_hook(pre_step)
    raw = [float(t.train_step()[1]) for _ in range(3)]
    assert all(r > 10 * max_norm for r in raw)  # the raw norms were large ...
    assert all(s <= max_norm * (1 + 1e-4) for s in seen)  # ... the optimizer only saw clipped ones


def test_huge_gradient_bounded_update(data_root, tmp_path):
    """With plain SGD semantics (AdamW betas=0 is sign-like, so check through the gradients): scale the loss
    by 1e8 and the parameter change is still bounded by lr * max_norm-ish via the clipped gradient."""
    t = _trainer(data_root, tmp_path / "huge", optim={"grad_clip": 0.5, "warmup_steps": 0})
    orig = t.transport.training_loss

    def huge(*a, **k):
        out = orig(*a, **k)
        return {**out, "loss": out["loss"] * 1e8}

    t.transport.training_loss = huge
    seen = []
    t.optimizer.register_step_pre_hook(lambda o, a, k: seen.append(
        float(torch.nn.utils.get_total_norm([p.grad for g in o.param_groups for p in g["params"] if p.grad is not None]))))
    _, raw = t.train_step()
    assert float(raw) > 1e4 and seen[0] <= 0.5 * (1 + 1e-4)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_lr_schedule():
    assert lr_factor(0, warmup=4, total=10, schedule="constant", min_ratio=0.1) == 0.25
    assert lr_factor(3, warmup=4, total=10, schedule="constant", min_ratio=0.1) == 1.0
    assert lr_factor(9, warmup=4, total=10, schedule="constant", min_ratio=0.1) == 1.0
    assert lr_factor(4, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(10, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_run_files_and_checkpoint_contents(data_root, tmp_path):
    run = tmp_path / "files"
    t = _trainer(data_root, run, train={"steps": 4, "ckpt_every": 2, "sample_every": 2})
    t.train()
    out = t.finish()
    for name in ("config.yaml", "model.json", "metrics.csv", "samples.png", "samples/step_00000002.png"):
        assert (run / name).exists(), name
    assert out["grid"].endswith("samples.png")
    ck = load_checkpoint(run)
    assert ck.step == 4 and ck.state["data"]["pos"] > 0 and ck.config["model"]["mixer"] == t.cfg.model.mixer
    assert ck.model_config["hidden_size"] == 16 and ck.state["data_info"]["classes"] == ["square", "stripes"]
    assert set(ck.training) >= {"optimizer", "scheduler", "scaler"}
    assert {"torch", "noise_gen"} <= set(ck.rng)
    assert {"numpy_rng", "python_rng"} <= set(ck.state)


def test_tensorboard_scalars_match_the_csv(data_root, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs `pip install tensorboard`")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = _trainer(data_root, tmp_path / "run", train={"steps": 4, "log_every": 2},
                 logging={"out_dir": str(tmp_path), "progress": False, "tensorboard": True})
    t.train()
    t.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/steps_per_s"} <= set(acc.Tags()["scalars"])
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    csv_rows = csv_losses(tmp_path / "run" / "metrics.csv")
    assert [s for s, _ in logged] == [s for s, _ in csv_rows] == [2, 4]
    for (_, v), (_, loss) in zip(logged, csv_rows):
        assert v == pytest.approx(float(loss), rel=1e-6)


# ----------------------------------------------------------------------------- non-finite steps (NaN guard)
def _poison(trainer, at_steps):
    """Fault injection: the loss of the given 1-based steps is NaN (as a diverged model would give)."""
    orig = trainer.transport.training_loss

    def maybe_nan(*a, **k):
        out = orig(*a, **k)
        if trainer.step + 1 in at_steps:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    trainer.transport.training_loss = maybe_nan


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_finite_checkpoints(data_root, tmp_path):
    from zigscan.diffusion.checkpoint import list_checkpoints
    from zigscan.diffusion.trainer import NonFiniteLossError

    run = tmp_path / "nan"
    t = _trainer(data_root, run, train={"steps": 12, "ckpt_every": 2, "keep_last": 1})
    _poison(t, range(5, 100))
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"step 5: the loss is nan") as err:
        t.train()
    assert "step_00000004" in str(err.value) and "train.nonfinite=skip" in str(err.value)
    t.close()
    assert t.step == 4  # the bad update was not applied ...
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in t.model.named_parameters())  # (it did train before)
    # ... and the last finite checkpoint is there, loads, and is finite
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004"]
    ck = load_checkpoint(run)
    assert ck.step == 4 and all(torch.isfinite(v).all() for v in ck.model.values())


def test_nonfinite_skip_counts_and_continues(data_root, tmp_path):
    import csv

    run = tmp_path / "skip"
    t = _trainer(data_root, run, train={"steps": 6, "nonfinite": "skip", "max_nonfinite": 3})
    _poison(t, {2, 3})
    seen = []
    t.optimizer.register_step_pre_hook(lambda o, a, k: seen.append(t.step + 1))
    out = t.train()
    t.close()
    assert out["step"] == 6 and t.skipped == 2
    assert seen == [1, 4, 5, 6]  # steps 2 and 3 never reached the optimizer
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["skipped"] for r in rows] == ["0", "1", "2", "2", "2", "2"]
    assert rows[1]["loss"] == "nan" and all(r["loss"] != "nan" for r in rows[3:])
    assert load_checkpoint(run).state["nonfinite"] == {"skipped": 2, "in_a_row": 0}


def test_nonfinite_skip_stops_after_max_in_a_row(data_root, tmp_path):
    from zigscan.diffusion.trainer import NonFiniteLossError

    t = _trainer(data_root, tmp_path / "many", train={"steps": 10, "nonfinite": "skip", "max_nonfinite": 3})
    _poison(t, range(3, 100))
    with pytest.raises(NonFiniteLossError, match=r"step 5: .*3 non-finite steps in a row"):
        t.train()
    t.close()


def test_weights_that_are_not_finite_are_never_saved(data_root, tmp_path):
    from zigscan.diffusion.checkpoint import NonFiniteWeightsError

    run = tmp_path / "w"
    t = _trainer(data_root, run, train={"steps": 2})
    t.train()
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteWeightsError, match="NaN or inf"):
        t.save()
    t.close()
    assert load_checkpoint(run).step == 2 and all(torch.isfinite(v).all() for v in load_checkpoint(run).model.values())


# ----------------------------------------------------------------------------- the run folder lock
def test_second_trainer_on_a_run_folder_is_refused_naming_the_holder(data_root, tmp_path):
    import subprocess
    import sys
    import textwrap

    from zigscan.diffusion.runlock import LOCK_NAME, RunLockedError

    run = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from zigscan.diffusion.runlock import RunLock
        RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by another trainer: pid {holder.pid} on host"):
            _trainer(data_root, run, train={"steps": 2})
        assert not (run / "metrics.csv").exists() and not (run / "config.yaml").exists()  # nothing touched
        holder.kill()  # kill -9 while holding: the lock file stays, naming a dead pid
        holder.wait()
        assert (run / LOCK_NAME).exists()
        t = _trainer(data_root, run, train={"steps": 2})  # the stale lock is taken over
        assert t.train()["step"] == 2
        t.close()
        assert not (run / LOCK_NAME).exists()  # released on close
    finally:
        holder.kill()


def test_lock_is_released_when_construction_fails(data_root, tmp_path):
    from zigscan.diffusion.runlock import LOCK_NAME

    run = tmp_path / "r"
    t = _trainer(data_root, run, train={"steps": 2})
    t.train()
    t.close()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(config_from_dict(tiny_config(data_root, tmp_path)), run, resume=None)
    assert not (run / LOCK_NAME).exists()


def test_newer_trainer_in_the_same_process_takes_over_and_the_old_one_cannot_save(data_root, tmp_path):
    from zigscan.diffusion.runlock import RunLockedError

    run = tmp_path / "same"
    old = _trainer(data_root, run, train={"steps": 4})
    old.train(stop_at=2)
    new = _trainer(data_root, run, train={"steps": 4})  # e.g. a notebook cell run again
    assert new.step == 2
    with pytest.raises(RunLockedError, match="lost the lock"):
        old.save()
    assert new.train()["step"] == 4
    new.close()
    old.close()
