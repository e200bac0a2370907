"""The `zigscan` command line: train / sample / eval on a tiny run, listings, and one-line errors."""

from __future__ import annotations

import json
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
