"""Config: load YAML / TOML, dotted overrides, validation errors that name the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zigscan.diffusion.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_and_yaml(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  steps: 12\n  batch_size: 4\noptim:\n  lr: 3e-4\n")
    cfg = load_config(p)
    assert cfg.name == "run"  # the file's stem
    assert cfg.train.steps == 12 and cfg.train.batch_size == 4
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads "3e-4" as a string; the float type converts it
    assert cfg.train.seed == Config().train.seed  # untouched keys keep their defaults


def test_toml(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('name = "t"\n[model]\nschedule = ["sweep", "zigzag-s1"]\n[train]\nsteps = 3\n')
    cfg = load_config(p)
    assert cfg.name == "t" and cfg.train.steps == 3 and cfg.model.schedule == ["sweep", "zigzag-s1"]


def test_overrides_change_only_their_key():
    base = load_config(None)
    cfg = load_config(None, ["model.mixer=gla", "train.steps=10", "model.extra.mlp_ratio=2"])
    assert cfg.model.mixer == "gla" and cfg.train.steps == 10 and cfg.model.extra == {"mlp_ratio": 2}
    a, b = config_to_dict(base), config_to_dict(cfg)
    a["model"]["mixer"], a["train"]["steps"], a["model"]["extra"] = "gla", 10, {"mlp_ratio": 2}
    assert a == b  # nothing else changed: the schedule stays zigzag-8
    assert cfg.model.schedule == "zigzag-8"


def test_override_values_are_yaml():
    assert parse_override("model.schedule=[zigzag-s0,sweep]") == ("model.schedule", ["zigzag-s0", "sweep"])
    assert parse_override("model.mixer=null") == ("model.mixer", None)
    assert parse_override("train.compile=true") == ("train.compile", True)
    cfg = load_config(None, ["model.schedule=[zigzag-s0,sweep]", "optim.betas=[0.9,0.95]"])
    assert cfg.model.schedule == ["zigzag-s0", "sweep"] and cfg.optim.betas == [0.9, 0.95]
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.steps")


@pytest.mark.parametrize("override,fragment", [
    ("optim.lrr=1", "Did you mean: optim.lr?"),
    ("trian.steps=1", "Did you mean: train"),
    ("train.stepz=1", "train.steps"),
])
def test_unknown_keys_suggest_close_matches(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value) and "unknown config key" in str(err.value)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  mixr: gla\n")
    with pytest.raises(ConfigError, match=r"model\.mixr.*Did you mean: model\.mixer"):
        load_config(p)


def test_bad_names_list_allowed_values_from_the_registries():
    from zigscan.backbones import list_mixers

    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.mixer=mambba"])
    msg = str(err.value)
    assert "model.mixer" in msg and "mambba" in msg
    for name in list_mixers():
        assert name in msg  # the allowed names come from the registry
    with pytest.raises(ConfigError, match="model.schedule"):
        load_config(None, ["model.schedule=zigzag-9"])
    with pytest.raises(ConfigError, match=r"model.schedule\[1\]"):
        load_config(None, ["model.schedule=[sweep,nope]"])
    with pytest.raises(ConfigError, match="model.preset"):
        load_config(None, ["model.preset=zigma-Q/2"])
    with pytest.raises(ConfigError, match="data.name.*fashion-mnist"):
        load_config(None, ["data.name=fashion"])
    with pytest.raises(ConfigError, match="transport.path.*linear"):
        load_config(None, ["transport.path=linaer"])
    with pytest.raises(ConfigError, match="transport.prediction"):
        load_config(None, ["transport.prediction=eps"])
    with pytest.raises(ConfigError, match="sample.sampler.*heun"):
        load_config(None, ["sample.sampler=huen"])
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])


@pytest.mark.parametrize("override,fragment", [
    ("train.steps=abc", "train.steps"),
    ("train.steps=0", "positive"),
    ("optim.lr=-1", "optim.lr"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("model.depth=[1,2]", "model.depth"),
    ("train.compile=3", "true or false"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config(bad)


def test_save_roundtrip(tmp_path):
    cfg = load_config(None, ["model.schedule=[sweep,zigzag-s2]", "train.steps=7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_apply_overrides_does_not_mutate():
    data = {"train": {"steps": 5}}
    out = apply_overrides(data, ["train.steps=6"])
    assert data == {"train": {"steps": 5}} and out["train"]["steps"] == 6


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name == path.stem or cfg.name


# ----------------------------------------------------------------------------- numeric ranges
def test_every_numeric_key_has_a_range():
    from zigscan.diffusion.config import NUMERIC_RANGES, numeric_keys

    keys = numeric_keys()
    assert {"optim.lr", "train.threads", "sample.per_class", "optim.betas"} <= set(keys)
    assert set(keys) == set(NUMERIC_RANGES)  # a new numeric key must come with its range
    load_config(None)  # the defaults are inside their ranges


@pytest.mark.parametrize("override,allowed", [
    ("optim.lr=.inf", "(0, 100]"),
    ("optim.lr=.nan", "(0, 100]"),
    ("optim.lr=0", "(0, 100]"),
    ("optim.grad_clip=.nan", ">= 0"),
    ("optim.grad_clip=-1", ">= 0"),
    ("optim.min_lr_ratio=-0.5", "[0, 1]"),
    ("optim.weight_decay=-0.1", "[0, 1]"),
    ("optim.warmup_steps=-3", ">= 0"),
    ("optim.eps=0", "(0, 1]"),
    ("optim.betas=[0.9,1.0]", "[0, 1)"),
    ("sample.cfg_scale=.inf", "[0, 100]"),
    ("sample.cfg_scale=.nan", "[0, 100]"),
    ("eval.cfg_scale=-2", "[0, 100]"),
    ("sample.per_class=0", "positive integer"),
    ("sample.rows=0", "positive integer"),
    ("sample.atol=0", "(0, 1]"),
    ("train.threads=-1", "[1, 4096]"),
    ("train.threads=0", "[1, 4096]"),
    ("train.seed=-1", "[0, 2**63 - 1]"),
    ("train.keep_last=0", ">= 1"),
    ("train.max_nonfinite=0", "positive integer"),
    ("data.image_size=0", "positive integer"),
    ("data.subset=-5", "positive integer"),
    ("model.class_dropout_prob=1", "[0, 1)"),
    ("transport.train_eps=0.7", "[0, 0.5)"),
    ("eval.n=0", "positive integer"),
    ("eval.n_reference=0", "positive integer"),
    ("train.batch_size=-8", "positive integer"),
])
def test_out_of_range_numbers_name_the_key_and_the_range(override, allowed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"'{key}" in msg and "allowed:" in msg and allowed in msg, msg


def test_non_finite_values_in_free_form_mappings():
    with pytest.raises(ConfigError, match=r"model\.extra\.mlp_ratio.*finite"):
        load_config(None, ["model.extra.mlp_ratio=.nan"])


def test_empty_config_file_is_an_error_not_the_default_job(tmp_path):
    for text in ("", "# only a comment\n", "{}\n"):
        p = tmp_path / "empty.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=r"empty\.yaml.*is empty.*configs/"):
            load_config(p)
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(tmp_path / "empty.toml")


def test_undecodable_config_names_the_file_and_the_byte(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"name: caf\xe9\ntrain:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml.*not UTF-8.*0xe9 at offset 9"):
        load_config(p)
