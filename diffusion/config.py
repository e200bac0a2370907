"""The run configuration: typed, commented dataclasses loaded from YAML or TOML, with dotted overrides.

One ``Config`` holds everything a run needs (nanoGPT-style): data, model, transport, optim, train,
sample, eval and logging sections. It is loaded from a file, patched with ``--set key=value``
overrides, validated against the registries (so a bad name fails at load, naming the key and the
allowed values) and saved, resolved, with every checkpoint and in the run folder::

    cfg = load_config("configs/fashion_zigma.yaml", overrides=["train.steps=10", "model.mixer=gla"])
    cfg.model.mixer            # "gla": nothing else changed
    save_config(cfg, "runs/x/config.yaml")

``model.mixer`` and ``model.schedule`` are separate keys: swapping the mixer never touches the scan
schedule, and the schedule may be a registered name (``zigzag-8``) or a list of scan-path names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TransportConfig",
    "OptimConfig",
    "TrainConfig",
    "SampleConfig",
    "EvalConfig",
    "LoggingConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
    "validate_config",
    "SAMPLERS",
    "PRECISIONS",
]

SAMPLERS: tuple[str, ...] = ("euler", "heun", "dopri5", "sde")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


class ConfigError(ValueError):
    """A bad configuration: the message names the key, what arrived and what is allowed."""


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # dataset name (zigscan.diffusion.data): fashion-mnist, image-folder, ...
    root: str | None = None  # where the data lives; None = the dataset's default location
    image_size: int | None = None  # resize images to this side; None = native size (28 for Fashion-MNIST)
    captions: bool = False  # return a caption per image (text conditioning)
    num_frames: int | None = None  # video datasets: frames per clip
    train_split: str = "train"  # split used for training
    eval_split: str = "test"  # held-out split used as the FID/KID reference
    subset: int | None = None  # use only the first N training examples (quick experiments, tests)
    # latent datasets: the decoder of grids and eval samples (and FID/KID references): a local diffusers
    # AutoencoderKL folder, or "tiny" / "tiny:SEED" (a random TinyVAE, for tests); None = pixel data
    autoencoder: str | None = None
    autoencoder_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of that autoencoder
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of build_dataset


@dataclass
class ModelConfig:
    preset: str = "zigma-T/2"  # model preset (zigscan models list)
    mixer: str | None = "mamba"  # sequence mixer (zigscan mixers list); None = the preset's
    schedule: str | list[str] | None = "zigzag-8"  # schedule name or list of scan-path names, one per layer
    impl: Literal["auto", "kernel", "reference"] = "auto"  # mixer fast path: auto = kernel on CUDA if installed
    hidden_size: int | None = None  # width; None = the preset's
    depth: int | None = None  # number of blocks; None = the preset's
    patch_size: int | None = None  # patch side; None = the preset's
    class_dropout_prob: float | None = None  # label dropout for classifier-free guidance; None = preset's
    # input_size, in_channels, num_classes and num_frames come from the dataset unless set in `extra`
    extra: dict[str, Any] = field(default_factory=dict)  # other create_model overrides (DiT argument names)


@dataclass
class TransportConfig:
    path: str = "linear"  # interpolant: linear (alpha=t, sigma=1-t), gvp, vp
    prediction: str = "velocity"  # what the network predicts: velocity, score, noise
    loss_weight: str | None = None  # loss weighting (None = plain MSE on the prediction)
    time_sampling: str = "uniform"  # how training times t are drawn
    train_eps: float | None = None  # keep t away from the ends during training; None = the path's default
    sample_eps: float | None = None  # same, for sampling
    extra: dict[str, Any] = field(default_factory=dict)  # other Transport keyword arguments


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate of AdamW
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    weight_decay: float = 0.0  # decoupled weight decay
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps
    lr_schedule: str = "constant"  # after warm-up: constant or cosine (down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1  # floor of the cosine schedule, as a fraction of lr
    grad_clip: float | None = 1.0  # max global grad norm, applied BEFORE the step; None or 0 = off


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch size (split evenly over the processes)
    seed: int = 0  # seeds model init, data order, noise and time sampling
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    precision: str = "fp32"  # fp32, bf16 or fp16 autocast (GPU only; fp16 uses a GradScaler)
    ema_decay: float = 0.999  # EMA of the weights (used for samples and eval)
    ema_warmup: bool = True  # use min(ema_decay, (1+step)/(10+step)) so early EMA is not stuck at init
    grad_checkpointing: bool = False  # recompute block activations in backward (saves memory)
    log_every: int = 10  # steps between CSV / TensorBoard rows
    sample_every: int = 0  # steps between sample grids (0 = only at the end)
    ckpt_every: int = 0  # steps between checkpoints (0 = only at the end)
    keep_last: int = 3  # checkpoints kept on disk (older ones are deleted after a successful save)
    threads: int | None = None  # torch.set_num_threads on CPU; None = torch's default
    compile: bool = False  # torch.compile the model (GPU runs)
    # a step whose loss or gradient norm is not finite: "stop" ends the run with an error naming the step
    # (nothing non-finite is saved); "skip" drops that update (no optimizer / EMA step) and counts it
    nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite: int = 10  # with nonfinite=skip: stop once this many steps were skipped in a row


@dataclass
class SampleConfig:
    sampler: str = "heun"  # euler, heun, dopri5 (adaptive ODE) or sde (Euler-Maruyama)
    steps: int = 20  # integration steps (dopri5: ignored, uses atol/rtol)
    cfg_scale: float = 2.0  # classifier-free guidance scale (1 = off)
    per_class: int = 8  # grid: images per class row (unconditional: rows of this many)
    rows: int = 8  # unconditional grids: number of rows
    seed: int = 0  # fixed noise for the grids
    atol: float = 1e-5  # dopri5 tolerances
    rtol: float = 1e-5


@dataclass
class EvalConfig:
    at_end: bool = True  # compute FID/KID after training
    n: int = 2000  # generated images for FID/KID
    batch_size: int = 250  # sampling batch size
    cfg_scale: float | None = None  # guidance for eval samples; None = sample.cfg_scale
    n_reference: int | None = None  # held-out reference images; None = the whole eval split
    seed: int = 1  # noise seed of the eval samples
    # FID/KID features (zigscan.diffusion.metrics.EXTRACTORS): fashion-features (the shipped Fashion-MNIST
    # net) or torchscript (your own local network, extractor_kwargs.path=...); None = the dataset's own
    # (fashion-features for the Fashion-MNIST datasets, and for other data until you choose one)
    extractor: str | None = None
    extractor_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of that extractor


@dataclass
class LoggingConfig:
    out_dir: str = "runs"  # parent folder of run folders
    run_name: str | None = None  # run folder name; None = the config's name
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = True  # write TensorBoard events when the package is installed


@dataclass
class Config:
    name: str = "run"  # run name (default run folder: logging.out_dir/name)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def run_dir(self) -> Path:
        return Path(self.logging.out_dir) / (self.logging.run_name or self.name)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# ---------------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks
# ---------------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where it is unambiguous (1 -> 1.0,
    "1e-3" -> 0.001 for floats, a scalar str for ``str | list[str]``). Raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:  # first matching member wins (str before list for ``str | list[str]``)
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    return value


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    prefix, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join((prefix + '.' if prefix else '') + c for c in close)}?" if close else ""
    where = f"section {prefix!r}" if prefix else "the top level"
    return ConfigError(f"unknown config key {key!r}.{hint} Keys of {where}: {', '.join(known)}.")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix or '<top>'!r}: expected a mapping (section), got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(full, names)
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], *, validate: bool = True) -> Config:
    """Build a ``Config`` from a nested dict (missing keys take their defaults)."""
    cfg = _build(Config, data or {}, "")
    if validate:
        validate_config(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON serialisable) of a config or section."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# ---------------------------------------------------------------------------------------------------
# Overrides: --set key=value
# ---------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", "3e-4")``; values are YAML scalars or lists
    (``model.schedule=[zigzag-s0,sweep]``, ``model.mixer=null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. --set train.steps=100)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of the nested dict ``data`` with dotted overrides applied. Unknown keys raise
    ``ConfigError`` with close matches (checked against the dataclasses, not just the file)."""
    out = json.loads(json.dumps(data or {}))
    for text in overrides or []:
        key, value = parse_override(text)
        parts = key.split(".")
        cls: Any = Config
        node = out
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(cls)] if cls is not None else None
            sofar = ".".join(parts[: i + 1])
            if names is not None and part not in names:
                raise _unknown_key(sofar, names)
            tp = _hints(cls)[part] if cls is not None else Any
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                if _is_section(tp):
                    cls = tp
                elif typing.get_origin(tp) is dict or tp is dict:
                    cls = None  # free-form mapping (e.g. model.extra.mlp_ratio)
                elif cls is None:
                    pass
                else:
                    raise ConfigError(f"override {text!r}: {sofar!r} is a value, not a section")
                nxt = node.get(part)
                if not isinstance(nxt, dict):
                    nxt = {}
                    node[part] = nxt
                node = nxt
    return out


# ---------------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw nested dict of a YAML (.yaml/.yml) or TOML (.toml) file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a .yaml or .toml file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8 YAML or TOML (or pick the right file)"
        ) from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ConfigError(f"config file {str(path)!r} does not parse: {exc}") from None
    if data is None or data == {}:
        raise ConfigError(
            f"config file {str(path)!r} is empty (no settings); refusing to start the full default job. "
            "Start from a shipped config such as configs/smoke.yaml or configs/fashion_zigma.yaml"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, validate: bool = True
) -> Config:
    """Load ``path`` (YAML or TOML; None = all defaults), apply ``key=value`` overrides, validate."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return config_from_dict(data, validate=validate)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, defaults included), atomically."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# resolved zigscan config (every key, defaults included)\n"
                   + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Numeric ranges: every int / float key of every section is checked at load
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``lo`` .. ``hi`` (None = unbounded), each end open or closed.
    Floats must also be finite; ``None`` passes where the key's type allows it."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # what the range protects, for the message

    def __contains__(self, v: float) -> bool:
        if v != v or v in (float("inf"), float("-inf")):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def describe(self, integer: bool) -> str:
        def fmt(v: float) -> str:
            return "2**63 - 1" if v == 2**63 - 1 else str(int(v)) if integer else f"{v:g}"

        kind = "an integer" if integer else "a finite number"
        if integer and self.lo == 1 and self.hi is None and not self.lo_open:
            return "a positive integer (>= 1)"
        if self.lo is not None and self.hi is None:
            return f"{kind} {'>' if self.lo_open else '>='} {fmt(self.lo)}"
        if self.lo is None and self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {fmt(self.hi)}"
        if self.lo is None:
            return kind
        return (f"{kind} in {'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}"  # type: ignore[arg-type]
                f"{')' if self.hi_open else ']'}")


_POSITIVE = Range(1)
_COUNT = Range(0)
_SEED = Range(0, 2**63 - 1, why="seeds are 63-bit non-negative integers")
_UNIT = Range(0, 1)

# "section.key" -> allowed range. tests/diffusion/test_config.py holds every numeric field of the
# dataclasses to an entry here, so a new numeric key cannot skip its range check.
NUMERIC_RANGES: dict[str, Range] = {
    "data.image_size": _POSITIVE,
    "data.num_frames": _POSITIVE,
    "data.subset": _POSITIVE,
    "model.hidden_size": _POSITIVE,
    "model.depth": _POSITIVE,
    "model.patch_size": _POSITIVE,
    "model.class_dropout_prob": Range(0, 1, hi_open=True, why="1 would drop every label"),
    "transport.train_eps": Range(0, 0.5, hi_open=True),
    "transport.sample_eps": Range(0, 0.5, hi_open=True),
    "optim.lr": Range(0, 100, lo_open=True, why="an AdamW step moves each weight by about lr"),
    "optim.betas": Range(0, 1, hi_open=True),
    "optim.weight_decay": Range(0, 1, why="decoupled decay multiplies the weights by 1 - lr * weight_decay"),
    "optim.eps": Range(0, 1, lo_open=True),
    "optim.warmup_steps": _COUNT,
    "optim.min_lr_ratio": _UNIT,
    "optim.grad_clip": Range(0, why="0 or null turns clipping off"),
    "train.steps": _POSITIVE,
    "train.batch_size": _POSITIVE,
    "train.seed": _SEED,
    "train.ema_decay": Range(0, 1, hi_open=True),
    "train.log_every": _COUNT,
    "train.sample_every": _COUNT,
    "train.ckpt_every": _COUNT,
    "train.keep_last": Range(1, why="the last checkpoint is always kept"),
    "train.threads": Range(1, 4096, why="null = torch's default"),
    "train.max_nonfinite": _POSITIVE,
    "sample.steps": _POSITIVE,
    "sample.cfg_scale": Range(0, 100, why="1 = no guidance"),
    "sample.per_class": _POSITIVE,
    "sample.rows": _POSITIVE,
    "sample.seed": _SEED,
    "sample.atol": Range(0, 1, lo_open=True),
    "sample.rtol": Range(0, 1, lo_open=True),
    "eval.n": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "eval.cfg_scale": Range(0, 100, why="null = sample.cfg_scale; 1 = no guidance"),
    "eval.n_reference": _POSITIVE,
    "eval.seed": _SEED,
}


def numeric_keys(cls: type | None = None, prefix: str = "") -> dict[str, bool]:
    """Every numeric key of the config ("section.key" -> is it an integer?), read from the dataclasses."""
    cls = Config if cls is None else cls
    out: dict[str, bool] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out.update(numeric_keys(tp, f"{prefix}{f.name}."))
            continue
        args = set(typing.get_args(tp)) if typing.get_origin(tp) in (Union, types.UnionType, list) else {tp}
        args.discard(type(None))
        if args and args <= {int, float}:
            out[f"{prefix}{f.name}"] = args == {int}
    return out


def _check_ranges(cfg: Config) -> None:
    for key, integer in numeric_keys().items():
        section, _, leaf = key.partition(".")
        value = getattr(getattr(cfg, section), leaf)
        rng = NUMERIC_RANGES.get(key)
        if rng is None:
            raise ConfigError(f"config key {key!r} has no allowed range (a zigscan bug: add it to NUMERIC_RANGES)")
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if v is None or v in rng:
                continue
            where = f"{key}[{i}]" if isinstance(value, list) else key
            why = f" ({rng.why})" if rng.why else ""
            raise ConfigError(f"config key {where!r}: got {v!r}; allowed: {rng.describe(integer)}{why}. "
                              f"Fix it in the config file or with --set {where.split('[')[0]}=VALUE.")
    for key in ("data.kwargs", "data.autoencoder_kwargs", "model.extra", "transport.extra"):  # free-form mappings
        section, _, leaf = key.partition(".")
        for name, v in getattr(getattr(cfg, section), leaf).items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key '{key}.{name}': got {v!r}; allowed: a finite number")


# ---------------------------------------------------------------------------------------------------
# Validation against the registries
# ---------------------------------------------------------------------------------------------------


def _check_choice(key: str, value: Any, allowed: list[str] | tuple[str, ...], what: str, command: str = "") -> None:
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), list(allowed), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    listing = ", ".join(allowed) if len(allowed) <= 40 else ", ".join(list(allowed)[:40]) + ", ..."
    more = f" (`{command}` lists them)" if command else ""
    raise ConfigError(f"config key {key!r}: unknown {what} {value!r}.{hint} Allowed{more}: {listing}.")


def _registry_names(kind: Literal["mixer", "model", "schedule", "scanpath", "dataset", "extractor"]) -> list[str]:
    """The names of a registry (imported here, on use, so loading a config file stays light)."""
    if kind == "mixer":
        from zigscan.backbones import list_mixers

        return list_mixers()
    if kind == "model":
        from zigscan.backbones import list_models

        return list_models()
    if kind == "schedule":
        from zigscan.scanpaths.schedules import SCHEDULES

        return SCHEDULES.names()
    if kind == "scanpath":
        from zigscan.scanpaths.registry import SCANPATHS

        return SCANPATHS.names()
    if kind == "dataset":
        from .data import DATASETS

        return sorted(DATASETS)
    from .metrics import EXTRACTORS

    return list(EXTRACTORS)


def _transport_choices() -> dict[str, list[str]]:
    """Allowed transport values, read from the interpolant registry and the transport module."""
    from . import interpolants, transport

    return {
        "path": interpolants.PATHS.names(),
        "prediction": list(transport.PREDICTIONS),
        "loss_weight": list(dict.fromkeys(["none", *(w for w in transport.LOSS_WEIGHTS if w is not None)])),
        "time_sampling": list(transport.TIME_SAMPLINGS),
    }


def validate_config(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the first bad key: every number against ``NUMERIC_RANGES``, every name
    against the registries."""
    _check_ranges(cfg)
    m = cfg.model
    models = _registry_names("model")
    if models:
        _check_choice("model.preset", m.preset, models, "model preset", "zigscan models list")
    mixers = _registry_names("mixer")
    if m.mixer is not None and mixers:
        _check_choice("model.mixer", m.mixer, mixers, "mixer", "zigscan mixers list")
    if isinstance(m.schedule, str):
        schedules = _registry_names("schedule")
        if schedules:
            _check_choice("model.schedule", m.schedule, schedules, "schedule", "zigscan scans schedules")
    elif isinstance(m.schedule, list):
        if not m.schedule:
            raise ConfigError("config key 'model.schedule': the list of scan paths is empty")
        paths = _registry_names("scanpath")
        if paths:
            for i, name in enumerate(m.schedule):
                _check_choice(f"model.schedule[{i}]", name, paths, "scan path", "zigscan scans list")

    datasets = _registry_names("dataset")
    if datasets:
        _check_choice("data.name", cfg.data.name, datasets, "dataset")
    extractors = _registry_names("extractor")
    if cfg.eval.extractor is not None and extractors:
        _check_choice("eval.extractor", cfg.eval.extractor, extractors, "feature extractor")

    tc = _transport_choices()
    for key in ("path", "prediction", "loss_weight", "time_sampling"):
        value = getattr(cfg.transport, key)
        if value is None or key not in tc:
            continue
        _check_choice(f"transport.{key}", value, tc[key], key.replace("_", " "))

    o = cfg.optim
    if len(o.betas) != 2:
        raise ConfigError(f"config key 'optim.betas': expected two numbers in [0, 1), got {o.betas}")
    _check_choice("optim.lr_schedule", o.lr_schedule, LR_SCHEDULES, "learning-rate schedule")

    t = cfg.train
    _check_choice("train.precision", t.precision, PRECISIONS, "precision")
    _check_choice("train.device", t.device, DEVICES, "device")

    _check_choice("sample.sampler", cfg.sample.sampler, SAMPLERS, "sampler")

