"""The `zigscan` command line: train / sample / eval on a tiny run, listings, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from trainhelp import TEST_MIXER, csv_losses, make_image_folder, tiny_config, write_config

from zigscan.diffusion.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run through the CLI, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "imgs")
    cfg = write_config(root / "tiny.yaml", tiny_config(data, root / "runs", train={"steps": 4, "ckpt_every": 2}))
    rc = main(["train", str(cfg), "--out", str(root / "run"), "--set", "train.steps=5"])
    assert rc == 0
    return root


def test_train_writes_checkpoint_csv_png(run, capsys):
    r = run / "run"
    assert (r / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    assert [s for s, _ in csv_losses(r / "metrics.csv")] == [1, 2, 3, 4, 5]
    png = r / "samples.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.width > 3 * 16 and im.height >= 2 * 16  # 2 labelled rows of 3 images


def test_train_again_resumes_and_does_nothing_more(run, capsys):
    rc = main(["train", str(run / "tiny.yaml"), "--out", str(run / "run"), "--set", "train.steps=5"])
    assert rc == 0
    assert "steps: 5" in capsys.readouterr().out
    assert len(csv_losses(run / "run" / "metrics.csv")) == 5


def test_sample(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["sample", str(run / "run"), "--n", "4", "--cfg", "1.5", "--out", str(out), "--sampler", "heun",
               "--steps", "2", "--labels", "1,0"])
    assert rc == 0 and out.exists()
    assert str(out) in capsys.readouterr().out
    rc = main(["sample", str(run / "run" / "checkpoints" / "step_00000004"), "--n", "2", "--out", str(out),
               "--sampler", "sde", "--steps", "3"])
    assert rc == 0


def test_eval(run, tmp_path, capsys):
    rc = main(["eval", str(run / "run"), "--n", "24", "--out", str(tmp_path / "ev"), "--steps", "2"])
    assert rc == 0
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert metrics["fid"] >= 0 and "kid" in metrics and metrics["n_samples"] == 24
    assert (tmp_path / "ev" / "eval_samples.png").exists()
    assert "FID" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["train", "{cfg}", "--set", "model.mixer=mambaa"], "unknown mixer 'mambaa'"),
    (["train", "{cfg}", "--set", "train.stepz=3"], "Did you mean: train.steps"),
    (["train", "{missing}"], "does not exist"),
    (["sample", "{missing}"], "does not exist"),
    (["sample", "{corrupt}"], "corrupt"),
])
def test_bad_input_is_one_line_exit_2(run, tmp_path, capsys, argv, fragment):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(run / "run", corrupt)
    latest = corrupt / "checkpoints" / (corrupt / "checkpoints" / "latest").read_text().strip()
    (latest / "ema.safetensors").write_bytes(b"\0" * 10)
    subs = {"{cfg}": str(run / "tiny.yaml"), "{missing}": str(tmp_path / "missing.yaml"), "{corrupt}": str(corrupt)}
    rc = main([subs.get(a, a) for a in argv] + (["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert rc == 2
    assert fragment in err and "Traceback" not in err
    assert err.strip().startswith("zigscan: error:")


def test_corrupt_checkpoint_message_names_file_and_previous(run, tmp_path, capsys):
    import shutil

    corrupt = tmp_path / "c"
    shutil.copytree(run / "run", corrupt)
    (corrupt / "checkpoints" / "step_00000005" / "model.safetensors").write_bytes(b"x")
    rc = main(["train", str(run / "tiny.yaml"), "--out", str(corrupt), "--set", "train.steps=6"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.safetensors" in err and "step_00000004" in err


def test_listings(capsys):
    assert main(["mixers", "list"]) == 0
    out = capsys.readouterr().out
    assert TEST_MIXER in out and "gla" in out
    assert main(["models", "list", "zigma-T*"]) == 0
    out = capsys.readouterr().out
    assert "zigma-T/2" in out and "M " in out  # parameter count in millions
    assert main(["models", "list", "nothing-like-this*"]) == 2


def test_python_dash_m_and_debug(tmp_path):
    cmd = [sys.executable, "-m", "zigscan.diffusion.cli", "train", str(tmp_path / "nope.yaml")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "does not exist" in p.stderr
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr


# ----------------------------------------------------------------------------- a hostile user's inputs
def _copy_run(run, tmp_path, name="copy"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(run / "run", dst)
    (dst / "train.lock").unlink(missing_ok=True)
    return dst


def _one_line_error(capsys, rc, *fragments, code=2):
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("zigscan: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _train(run, tmp_path, *extra, out=None):
    return main(["train", str(run / "tiny.yaml"), "--out", str(out or tmp_path / "o"), *extra])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(run, tmp_path, capsys):
    rc = main(["sample", str(run / "run"), "--device", "cuda", "--out", str(tmp_path / "g.png")])
    _one_line_error(capsys, rc, "--device cuda", "CUDA is not available", "--device cpu")
    rc = main(["sample", str(run / "run"), "--device", "tpu"])
    _one_line_error(capsys, rc, "expected auto, cpu, cuda or cuda:N")
    rc = _train(run, tmp_path, "--set", "train.device=cuda")
    _one_line_error(capsys, rc, "train.device", "CUDA is not available")


@pytest.mark.parametrize("setting,fragment", [
    ("train.threads=-1", "'train.threads': got -1; allowed: an integer in [1, 4096]"),
    ("optim.lr=.inf", "'optim.lr': got inf"),
    ("optim.grad_clip=.nan", "'optim.grad_clip': got nan"),
    ("sample.per_class=0", "'sample.per_class': got 0"),
])
def test_bad_numbers_fail_at_load_before_any_training(run, tmp_path, capsys, setting, fragment):
    rc = _train(run, tmp_path, "--set", setting)
    _one_line_error(capsys, rc, fragment)
    assert not (tmp_path / "o").exists()  # refused before the run folder was made


def test_empty_and_undecodable_config_files(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    rc = main(["train", str(tmp_path / "empty.yaml")])
    _one_line_error(capsys, rc, "empty.yaml", "is empty")
    (tmp_path / "bytes.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    rc = main(["train", str(tmp_path / "bytes.yaml")])
    _one_line_error(capsys, rc, "bytes.yaml", "not UTF-8")


@pytest.mark.parametrize("argv,fragment", [
    (["--n", "0"], "positive integer"),
    (["--cfg", "nan"], "finite guidance scale"),
    (["--cfg", "inf"], "finite guidance scale"),
    (["--steps", "-2"], "positive integer"),
    (["--seed", "-1"], "seed"),
])
def test_bad_sample_flags_are_usage_errors(run, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(run / "run"), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and fragment in err and "Traceback" not in err


def test_a_diverging_run_stops_with_the_step_and_keeps_its_checkpoint(run, tmp_path, capsys, monkeypatch):
    from zigscan.diffusion.transport import Transport

    orig = Transport.training_loss
    calls = {"n": 0}

    def diverge(self, *a, **k):
        calls["n"] += 1
        out = orig(self, *a, **k)
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] >= 3 else out

    monkeypatch.setattr(Transport, "training_loss", diverge)
    rc = _train(run, tmp_path, "--set", "train.ckpt_every=2", "--set", "train.keep_last=1")
    captured = capsys.readouterr()
    assert rc == 2 and "final loss" not in captured.out
    assert "step 3: the loss is nan" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "o" / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (tmp_path / "o" / "train.lock").exists()  # the lock was given back


def test_a_second_trainer_on_the_same_folder_is_refused(run, tmp_path, capsys):
    import textwrap

    out = _copy_run(run, tmp_path, "busy")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from zigscan.diffusion.runlock import RunLock
        RunLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (out / "metrics.csv").read_bytes(), (out / "config.yaml").read_bytes()
        rc = _train(run, tmp_path, "--set", "train.steps=7", out=out)
        _one_line_error(capsys, rc, "in use by another trainer", f"pid {holder.pid}", "--out")
        assert ((out / "metrics.csv").read_bytes(), (out / "config.yaml").read_bytes()) == before  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_disk_full_says_so_and_loses_nothing(run, tmp_path, capsys, monkeypatch):
    import errno

    from zigscan.diffusion import checkpoint as ck

    real, calls = ck._write_tensors, {"n": 0}

    def fill_up(tensors, path):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (model + EMA) fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)

    monkeypatch.setattr(ck, "_write_tensors", fill_up)
    rc = _train(run, tmp_path, "--set", "train.ckpt_every=2")
    _one_line_error(capsys, rc, "the disk is full", "run the same command again")
    root = tmp_path / "o" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]
    monkeypatch.undo()
    assert main(["sample", str(tmp_path / "o"), "--n", "2", "--steps", "1", "--out", str(tmp_path / "g.png")]) == 0


def test_undecodable_run_files_name_the_file(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path, "bytes")
    (out / "metrics.csv").write_bytes(b"step,loss\n\xff\xfe\x00\x01\n")
    rc = _train(run, tmp_path, "--set", "train.steps=6", out=out)
    _one_line_error(capsys, rc, "metrics.csv", "move it aside")
    man = out / "checkpoints" / "step_00000005" / "manifest.json"
    man.write_bytes(b"\xff\xfe{")
    rc = main(["sample", str(out), "--out", str(tmp_path / "g.png")])
    _one_line_error(capsys, rc, "manifest.json", "corrupt", "step_00000004")


def test_empty_latest_falls_back_to_the_newest_complete_checkpoint(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path, "nolatest")
    (out / "checkpoints" / "latest").write_text("")
    rc = main(["sample", str(out), "--n", "2", "--steps", "1", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "is empty or not text; using the newest complete checkpoint step_00000005" in err


def test_corrupt_latents_file_names_it(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=2)
    bad = tmp_path / "latents.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    cfg = tiny_config(data, tmp_path / "runs", data={"name": "latents", "root": None, "image_size": None,
                                                     "kwargs": {"path": str(bad)}})
    rc = main(["train", str(write_config(tmp_path / "lat.yaml", cfg)), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "latents.safetensors", "corrupt", "precompute_latents")


def test_plugin_mixer_whose_factory_raises_names_the_mixer_and_the_plugin(run, tmp_path, capsys):
    import types

    from zigscan.backbones import MixerSpec
    from zigscan.plugins import hookimpl, register_plugin, reset_plugins

    def factory(d_model, impl="auto", **kw):
        raise RuntimeError("the kernel library is the wrong version")

    plugin = types.SimpleNamespace(zigscan_register_mixers=hookimpl(lambda: [MixerSpec("boom", factory, "breaks")]))
    try:
        from zigscan.backbones import list_mixers

        list_mixers()
        register_plugin(plugin, name="boom_plugin")
        rc = _train(run, tmp_path, "--set", "model.mixer=boom")
        _one_line_error(capsys, rc, "mixer 'boom'", "'boom_plugin'", "the kernel library is the wrong version")
    finally:
        reset_plugins()


def test_an_internal_error_is_one_line_unless_debug(monkeypatch, capsys):
    from zigscan.diffusion import cli

    def bug(args):
        return 1 // 0

    monkeypatch.setattr(cli, "cmd_models_list", bug)
    rc = main(["models", "list"])
    err = capsys.readouterr().err
    assert rc == 1 and "internal error: ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["models", "list", "--debug"])


# ---------------------------------------------------------------------------------------------------
# OpenMP busy-wait (set before torch is imported)
# ---------------------------------------------------------------------------------------------------


def test_tune_openmp_wait_sets_the_spin_count_only_before_torch_and_never_over_the_user(monkeypatch):
    from zigscan.diffusion import cli

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    cli.tune_openmp_wait()  # torch is imported in this process: too late, nothing set
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    cli.tune_openmp_wait()
    assert os.environ["GOMP_SPINCOUNT"] == cli.OPENMP_SPIN_COUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    cli.tune_openmp_wait()
    assert os.environ["GOMP_SPINCOUNT"] == "123"
