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


# ----------------------------------------------------------------------------- re-saves and kill points
_FS_OPS = ("replace", "rename", "link", "mkdir", "unlink")


def _killed_save(tmp_path, kill_at, step, value):
    """Fork; the child re-saves ``step`` and dies like kill -9 (``os._exit``, no cleanup) on its
    ``kill_at``-th file-system operation. Returns how many operations the child got through."""
    import os
    import shutil

    counter = tmp_path / f"ops-{kill_at}"
    pid = os.fork()
    if pid == 0:  # child
        try:
            n = {"ops": 0}

            def wrap(fn):
                def inner(*a, **k):
                    n["ops"] += 1
                    counter.write_text(str(n["ops"]))
                    if n["ops"] == kill_at:
                        os._exit(9)
                    return fn(*a, **k)
                return inner

            for name in _FS_OPS:
                setattr(ck.os, name, wrap(getattr(os, name)))
            ck.shutil.rmtree = wrap(shutil.rmtree)
            _save(tmp_path, step, value=value, keep_last=5)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), int(counter.read_text()) if counter.exists() else 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_kill_at_every_point_of_a_resave_leaves_latest_complete(tmp_path):
    """Resume from step 1 after a run saved 1 and 2, reach step 2 again, re-save it: a kill -9 at any
    file-system operation of that save leaves `latest` naming a complete checkpoint (the old step 2 or
    the new one), never a missing folder."""
    import shutil

    kill_at, finished = 1, False
    while not finished:
        run = tmp_path / f"run{kill_at}"
        _save(run, 1)
        _save(run, 2, value=20.0)  # the old step 2
        code, ops = _killed_save(run, kill_at, 2, 99.0)  # the re-save: weights 99
        finished = code == 0
        assert code in (0, 9), f"child failed at kill point {kill_at}"
        got = load_checkpoint(run)  # verifies the manifest: complete
        w = float(got.model["w"][0, 0])
        assert (got.step, w) in ((2, 20.0), (2, 99.0)), (kill_at, got.path, w)
        # and the next save cleans up whatever the kill left behind
        _save(run, 3)
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["latest", "step_00000001", "step_00000002", "step_00000003"], (kill_at, names)
        shutil.rmtree(run)
        kill_at += 1
        assert kill_at < 60
    assert kill_at > 8  # the re-save really went through many kill points


def test_resave_replaces_the_step_and_reports_no_leftovers(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2, value=20.0)
    _save(tmp_path, 2, value=99.0)
    got = load_checkpoint(tmp_path)
    assert got.step == 2 and float(got.model["w"][0, 0]) == 99.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001", "step_00000002"]


@pytest.mark.parametrize("content", [b"", b"\n", b"\xff\xfe\x00garbage", b"step_00000009\n", b"../../etc\n"])
def test_unusable_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, content, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "checkpoints" / "step_00000003").mkdir()  # incomplete: no manifest
    (tmp_path / "checkpoints" / "latest").write_bytes(content)
    with caplog.at_level("WARNING", logger="zigscan.checkpoint"):
        got = load_checkpoint(tmp_path)
    assert got.step == 2
    assert "newest complete checkpoint step_00000002" in caplog.text and "latest" in caplog.text


def test_unusable_latest_without_checkpoints_says_so(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_bytes(b"")
    with pytest.raises(CheckpointError, match="latest.*is empty or not text.*no complete checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["manifest.json", "state.json"])
def test_undecodable_json_names_the_file(tmp_path, name):
    _save(tmp_path, 1)
    path = _save(tmp_path, 2)
    (path / name).write_bytes(b"\xff\xfe\xfa not json")
    if name == "state.json":  # keep the manifest consistent so the state itself is what fails
        man = json.loads((path / "manifest.json").read_text())
        man["files"].pop("state.json")
        (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert name in str(err.value) and "corrupt" in str(err.value) and "step_00000001" in str(err.value)


def test_nonfinite_weights_are_refused_and_nothing_is_pruned(tmp_path):
    _save(tmp_path, 1, keep_last=1)
    bad = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ck.NonFiniteWeightsError, match="step 2.*'w'|step 2.*w.*NaN"):
        save_checkpoint(tmp_path, 2, model=bad, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert load_checkpoint(tmp_path).step == 1


@pytest.mark.parametrize("fault", ["oserror", "torch_runtime"])
def test_disk_full_during_a_save_says_so_and_keeps_latest(tmp_path, monkeypatch, fault):
    import errno

    _save(tmp_path, 1)
    if fault == "oserror":
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(ck, "_write_tensors", full)
    else:  # torch.save reports a full disk as a RuntimeError without errno; the free space tells
        def full(*a, **k):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        monkeypatch.setattr(ck.torch, "save", full)
        monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(OSError) as err:
        _save(tmp_path, 2)
    assert err.value.errno == errno.ENOSPC
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]  # no half-written folder
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 1
