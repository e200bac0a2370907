"""The builder: one route from a config or a checkpoint to objects, the scan-order check on every load,
overrides applied one way for train / sample / eval, the typed data description, eval.extractor."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from trainhelp import make_image_folder, tiny_config, write_config

from zigscan.diffusion.builder import (
    ScanOrderError,
    build_data_info,
    build_ema,
    build_model,
    build_train_dataset,
    checkpoint_config,
    load_run,
)
from zigscan.diffusion.checkpoint import load_checkpoint
from zigscan.diffusion.cli import main
from zigscan.diffusion.config import ConfigError, config_from_dict
from zigscan.diffusion.data import DataInfo, fashion_caption
from zigscan.diffusion.trainer import Trainer
from zigscan.scanpaths import SCHEDULES, Schedule, register_schedule

DRIFT = "test-drifting-schedule"  # a registered schedule whose orders change between training and sampling


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through the CLI on DRIFT = [zigzag-s0, zigzag-s1]."""
    root = tmp_path_factory.mktemp("builder")
    register_schedule(Schedule(DRIFT, ["zigzag-s0", "zigzag-s1"]), override=True)
    data = make_image_folder(root / "imgs")
    cfg = tiny_config(data, root / "runs", model={"schedule": DRIFT}, train={"steps": 2})
    path = write_config(root / "tiny.yaml", cfg)
    assert main(["train", str(path), "--out", str(root / "run")]) == 0
    yield root, cfg
    SCHEDULES.unregister(DRIFT)


@pytest.fixture
def drifted():
    """The schedule now resolves layer 1 to another order (a plugin update); restored afterwards."""
    register_schedule(Schedule(DRIFT, ["zigzag-s0", "sweep"]), override=True)
    yield
    register_schedule(Schedule(DRIFT, ["zigzag-s0", "zigzag-s1"]), override=True)


def test_sample_and_eval_refuse_scan_orders_that_changed_since_training(trained, drifted, tmp_path, capsys):
    root, _ = trained
    grid = tmp_path / "grid.png"
    assert main(["sample", str(root / "run"), "--n", "2", "--steps", "1", "--out", str(grid)]) == 2
    err = capsys.readouterr().err
    assert "layer 1: trained 'zigzag-s1', now 'sweep'" in err and "layer 0" not in err
    assert DRIFT in err and "Traceback" not in err and not grid.exists()
    assert main(["eval", str(root / "run"), "--n", "4", "--steps", "1", "--out", str(tmp_path / "ev")]) == 2
    assert "layer 1: trained 'zigzag-s1', now 'sweep'" in capsys.readouterr().err
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_resume_refuses_scan_orders_that_changed_since_training(trained, drifted):
    root, cfg = trained
    more = json.loads(json.dumps(cfg))
    more["train"]["steps"] = 3
    with pytest.raises(ScanOrderError, match="layer 1: trained 'zigzag-s1', now 'sweep'"):
        Trainer(config_from_dict(more), root / "run", resume="auto")


def test_load_run_gives_the_trained_ema_weights(trained, tmp_path):
    root, _ = trained
    run = load_run(root / "run")
    ckpt = load_checkpoint(root / "run", training=False, which=("ema",))
    assert [p.name for p in run.model.scan_paths] == ["zigzag-s0", "zigzag-s1"]
    assert not run.model.training
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, ckpt.ema[name]), name
    assert run.data_info == DataInfo.from_dict(ckpt.state["data_info"])
    assert run.data_info.classes == ("square", "stripes") and run.data_info.image_size == (16, 16)


def test_sample_and_eval_take_set_like_train(trained, tmp_path, capsys):
    root, _ = trained
    from PIL import Image

    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert main(["sample", str(root / "run"), "--set", "sample.per_class=1", "--steps", "1",
                 "--out", str(one)]) == 0
    assert main(["sample", str(root / "run"), "--set", "sample.per_class=2", "--steps", "1",
                 "--out", str(two)]) == 0
    with Image.open(one) as a, Image.open(two) as b:
        assert b.width > a.width and a.height == b.height  # 2 labelled rows of 1, then of 2 images
    # a flag wins over --set of its key; eval.n via --set
    assert main(["eval", str(root / "run"), "--set", "eval.n=6", "--set", "sample.steps=9", "--steps", "1",
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert metrics["n_samples"] == 6 and metrics["steps"] == 1
    capsys.readouterr()
    rc = main(["sample", str(root / "run"), "--set", "model.depth=3", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "'model.depth'" in err and "weights fix" in err


def test_checkpoint_config_refuses_fixed_keys_only_when_weights_are_fixed(trained):
    root, _ = trained
    ckpt = load_checkpoint(root / "run", training=False, which=())
    with pytest.raises(ConfigError, match="data.image_size"):
        checkpoint_config(ckpt, ["data.image_size=32"], weights_fixed=True)
    assert checkpoint_config(ckpt, ["data.root=/elsewhere", "eval.n=3"], weights_fixed=True).eval.n == 3
    assert checkpoint_config(ckpt, ["model.depth=3"], weights_fixed=False).model.depth == 3  # train --resume


def test_ema_copy_is_built_by_the_same_route_and_leaves_the_global_rng(tmp_path):
    cfg = config_from_dict(tiny_config(make_image_folder(tmp_path / "imgs", per_class=2), tmp_path))
    info = build_data_info(build_train_dataset(cfg), cfg)
    model = build_model(cfg, info)
    state = torch.get_rng_state()
    ema = build_ema(model, cfg, info)
    assert torch.equal(torch.get_rng_state(), state)
    assert type(ema) is type(model) and not any(p.requires_grad for p in ema.parameters())
    for (name, a), b in zip(model.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(a, b), name


def test_data_info_is_typed_and_round_trips():
    info = DataInfo(name="fashion-mnist", channels=1, image_size=(28, 28), num_classes=10,
                    classes=("a", "b"), captions=True)
    assert DataInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ValueError, match="unknown keys"):
        DataInfo.from_dict({**info.to_dict(), "chanels": 3})
    assert info.class_names()[:3] == ["a", "b", "2"]
    # dataset-specific parts come from the dataset: captions and the feature network
    assert info.caption(9, 2) == fashion_caption(9, 2)
    assert info.feature_extractor == "fashion-features"
    folder = DataInfo(name="image-folder", channels=3, image_size=(16, 16))
    assert folder.feature_extractor is None
    with pytest.raises(ValueError, match="has no captions"):
        folder.caption(0)


def test_captions_on_a_dataset_without_captions_is_a_config_error(tmp_path):
    cfg = config_from_dict(tiny_config(make_image_folder(tmp_path / "imgs", per_class=2), tmp_path,
                                       data={"captions": True}))
    with pytest.raises(ConfigError, match="data.captions"):
        build_train_dataset(cfg)


def test_eval_extractor_key_is_validated_and_used(trained, tmp_path):
    with pytest.raises(ConfigError, match="eval.extractor.*Did you mean: fashion-features"):
        config_from_dict({"eval": {"extractor": "fashion-feature"}})

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 4)  # (B, 4)

    net = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net()), str(net))
    root, _ = trained
    assert main(["eval", str(root / "run"), "--n", "6", "--steps", "1", "--out", str(tmp_path / "ev"),
                 "--set", "eval.extractor=torchscript", "--set", f"eval.extractor_kwargs.path={net}",
                 "--set", "eval.extractor_kwargs.channels=1"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["extractor"] == "torchscript:net.pt"


def test_load_run_refuses_a_network_that_changed_since_training(trained):
    """A preset redefined after training (here by user code; a plugin could do the same) would build
    another network from the same config: the load names the key instead of failing inside torch."""
    from zigscan.backbones.presets import MODELS, ModelSpec
    from zigscan.diffusion.checkpoint import CheckpointError

    root, _ = trained
    original, source = MODELS.get("zigma-T/2"), MODELS.source("zigma-T/2")
    MODELS.register("zigma-T/2", ModelSpec("zigma-T/2", {**original.kwargs, "mlp_ratio": 2.0}), override=True)
    try:
        with pytest.raises(CheckpointError, match="mlp_ratio: checkpoint 0.0, now 2.0"):
            load_run(root / "run")
    finally:
        MODELS.register("zigma-T/2", original, source=source, override=True)
    assert load_run(root / "run").model.config["mlp_ratio"] == 0.0


def test_train_resume_without_a_config_file_applies_set_to_the_saved_config(trained, tmp_path, capsys):
    import shutil

    root, _ = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    assert main(["train", "--resume", str(run), "--set", "train.steps=3"]) == 0
    assert "steps: 3" in capsys.readouterr().out
    assert load_checkpoint(run, training=False, which=()).step == 3
    assert main(["train", "--resume", str(run), "--set", "model.depth=3"]) == 2  # checked against the weights
    assert "model.depth" in capsys.readouterr().err
