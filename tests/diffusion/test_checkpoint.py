"""Checkpoints: atomic writes (a crash mid-save never breaks `latest`), keep-last-N, corrupt-file errors."""

from __future__ import annotations

import json

import pytest
import torch

from zigscan.diffusion import checkpoint as ck
from zigscan.diffusion.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def _save(run, step, value=None, **kw):
    w = torch.full((3, 4), float(step if value is None else value))
    return save_checkpoint(run, step, model={"w": w}, ema={"w": w * 2}, training={"opt": {"step": torch.tensor(step)}},
                           rng={"torch": torch.get_rng_state()}, state={"data": {"epoch": 0, "pos": step}}, **kw)


def test_roundtrip(tmp_path):
    path = _save(tmp_path, 5)
    got = load_checkpoint(tmp_path)
    assert got.path == path and got.step == 5 and got.state["data"]["pos"] == 5
    assert torch.equal(got.model["w"], torch.full((3, 4), 5.0)) and torch.equal(got.ema["w"], torch.full((3, 4), 10.0))
    assert int(got.training["opt"]["step"]) == 5 and torch.equal(got.rng["torch"], torch.get_rng_state())
    # every way of naming it resolves to the same folder
    for name in (tmp_path, tmp_path / "checkpoints", path, path / "model.safetensors", tmp_path / "checkpoints" / "latest"):
        assert resolve_checkpoint(name) == path


def test_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000003", "step_00000004"]
    assert load_checkpoint(tmp_path).step == 4


def test_crash_mid_write_keeps_latest(tmp_path, monkeypatch):
    _save(tmp_path, 2)
    calls = {"n": 0}
    real = ck._write_tensors

    def crash(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # model written, EMA half-way: the process "dies"
            path.write_bytes(b"partial")
            raise OSError("disk full (simulated)")
        real(tensors, path)

    monkeypatch.setattr(ck, "_write_tensors", crash)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, 4)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert not (root / "step_00000004").exists()
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # the temp folder was removed
    got = load_checkpoint(tmp_path)
    assert got.step == 2 and torch.equal(got.model["w"], torch.full((3, 4), 2.0))
    monkeypatch.setattr(ck, "_write_tensors", real)
    assert _save(tmp_path, 4).name == "step_00000004"  # the next save works


def test_crash_before_rename_leaves_a_folder_that_is_ignored(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real_replace = ck.os.replace

    def fail_on_folder(src, dst):
        if str(dst).endswith("step_00000003"):
            raise OSError("killed before rename (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", fail_on_folder)
    with pytest.raises(OSError):
        _save(tmp_path, 3)
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert load_checkpoint(tmp_path).step == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest"])
def test_corrupt_checkpoint_names_file_and_previous(tmp_path, damage):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:40])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(newest)
    msg = str(err.value)
    assert str(newest) in msg
    assert "step_00000001" in msg  # the previous checkpoint is suggested
    assert (tmp_path / "checkpoints" / "step_00000001").exists()  # nothing saved was lost
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000001").step == 1


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "empty")


def test_state_is_json_and_weights_only(tmp_path):
    path = _save(tmp_path, 1)
    meta = json.loads((path / "state.json").read_text())
    assert meta["step"] == 1 and meta["format_version"] == ck.FORMAT_VERSION
    torch.load(path / "training.pt", weights_only=True)  # no pickled code
