"""From a config, or a checkpoint, to objects: the one builder that train, sample and eval share.

    cfg = load_config("configs/fashion_zigma.yaml", ["train.steps=10"])
    dataset = build_train_dataset(cfg)                 # and build_eval_dataset(cfg): the FID/KID reference
    data_info = build_data_info(dataset, cfg)          # DataInfo: channels, size, classes, frames, ...
    model = build_model(cfg, data_info)                # create_model(preset, mixer=, schedule=, **sizes)
    transport = build_transport(cfg)
    optimizer, scheduler = build_optimizer(cfg, model)

    run = load_run("runs/fashion_zigma", overrides=["sample.steps=50"])   # sample and eval
    run.model, run.transport, run.cfg, run.data_info, run.checkpoint

Every network comes from ``build_model`` (the trained one, its EMA copy, and on load the checkpoint's
own saved config), like nanoGPT's ``GPT(GPTConfig(**checkpoint['model_args']))``. A checkpoint's weights
go into a network only through ``load_weights`` (sample, eval and the trainer's resume alike), which
first checks the scan path of every layer against the one recorded at training time: a schedule name
that now resolves to other orders (a plugin changed it) would run orders the weights were not trained on,
so it is an error naming the layers.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import Config, ConfigError, apply_overrides, config_from_dict
from .data import DataInfo, build_dataset, get_dataset_class

__all__ = [
    "Run",
    "ScanOrderError",
    "build_data_info",
    "build_dataset_for",
    "build_train_dataset",
    "build_eval_dataset",
    "model_overrides",
    "build_model",
    "build_ema",
    "build_transport",
    "lr_factor",
    "build_optimizer",
    "build_autoencoder",
    "build_extractor",
    "checkpoint_config",
    "check_scan_paths",
    "load_weights",
    "load_run",
    "RUN_OVERRIDABLE",
    "DEFAULT_EXTRACTOR",
]

log = logging.getLogger("zigscan.builder")

DEFAULT_EXTRACTOR = "fashion-features"  # eval features for data whose dataset names none (today's behaviour)
# config keys that `zigscan sample` / `zigscan eval` may override: the weights fix everything else
RUN_OVERRIDABLE = ("sample", "eval", "logging", "data.root", "data.eval_split", "data.kwargs", "transport.sample_eps")


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def _accepts(cls_or_fn: Any) -> set[str] | None:
    """Keyword names a class (its __init__) or function takes; None when it takes **kwargs."""
    fn = cls_or_fn.__init__ if isinstance(cls_or_fn, type) else cls_or_fn
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def build_dataset_for(cfg: Config, split: str | None) -> Any:
    """The dataset of ``cfg.data`` for ``split`` (None: a dataset without splits). Generic config keys
    go to the dataset only where its constructor takes them (``num_frames`` -> ``T``, ...)."""
    d = cfg.data
    cls = get_dataset_class(d.name)
    if d.captions and getattr(cls, "caption", None) is None:
        raise ConfigError(f"config key 'data.captions': dataset {d.name!r} has no captions; set data.captions=false "
                          "or use a dataset that captions its items (fashion-mnist)")
    accepted = _accepts(cls)
    training_split = split in (None, d.train_split)
    wanted = {
        "split": split,
        "root": d.root,
        "image_size": d.image_size,
        "size": d.image_size,
        "captions": d.captions or None,
        "T": d.num_frames,
        "limit": d.subset if training_split else None,
        "length": d.subset if training_split else None,
    }
    kwargs = {k: v for k, v in wanted.items() if v is not None and (accepted is None or k in accepted)}
    kwargs.update(d.kwargs)
    return build_dataset(d.name, **kwargs)


def build_train_dataset(cfg: Config) -> Any:
    return build_dataset_for(cfg, cfg.data.train_split)


def build_eval_dataset(cfg: Config) -> Any:
    """The held-out reference split; datasets without splits (image folders) use their only set."""
    accepted = _accepts(get_dataset_class(cfg.data.name))
    if accepted is not None and "split" not in accepted:
        log.warning("dataset %r has no splits: FID/KID reference = the training images", cfg.data.name)
        return build_dataset_for(cfg, None)
    return build_dataset_for(cfg, cfg.data.eval_split)


def build_data_info(dataset: Any, cfg: Config) -> DataInfo:
    """What the model and the sampler need to know about ``dataset`` (saved in checkpoints)."""
    d = cfg.data
    return DataInfo.from_dataset(dataset, name=d.name, captions=d.captions, autoencoder=d.autoencoder,
                                 autoencoder_kwargs=d.autoencoder_kwargs)


# ---------------------------------------------------------------------------------------------------
# Model, transport, optimizer
# ---------------------------------------------------------------------------------------------------


def model_overrides(cfg: Config, data_info: DataInfo) -> dict[str, Any]:
    """create_model keyword overrides: data-given sizes, then the config's explicit ones."""
    m = cfg.model
    h, w = data_info.image_size
    over: dict[str, Any] = {
        "input_size": h if h == w else (h, w),
        "in_channels": data_info.channels,
        "num_classes": data_info.num_classes,
    }
    if data_info.num_frames:
        over["num_frames"] = data_info.num_frames
    for key in ("hidden_size", "depth", "patch_size", "class_dropout_prob"):
        if getattr(m, key) is not None:
            over[key] = getattr(m, key)
    if m.impl != "auto":
        over["mixer_impl"] = m.impl
    if data_info.captions:  # text conditioning replaces class labels
        over["num_classes"] = 0
        over["text_encoder"] = "caption"
    over.update(m.extra)
    return over


def build_model(cfg: Config, data_info: DataInfo) -> nn.Module:
    """The network of ``cfg.model`` for data described by ``data_info`` (weights freshly initialised)."""
    from zigscan.backbones import create_model

    return create_model(cfg.model.preset, mixer=cfg.model.mixer, schedule=cfg.model.schedule,
                        **model_overrides(cfg, data_info))


def build_ema(model: nn.Module, cfg: Config, data_info: DataInfo) -> nn.Module:
    """A frozen copy of ``model`` (same weights, same device) for the EMA, built by ``build_model`` (scan
    paths hold caches and locks that deepcopy cannot copy); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        ema = build_model(cfg, data_info)
    ema.load_state_dict(model.state_dict())
    return ema.to(next(model.parameters()).device).eval().requires_grad_(False)


def build_transport(cfg: Config) -> Any:
    """The stochastic-interpolant transport of ``cfg.transport`` (SiT's ``create_transport``)."""
    from .transport import Transport

    t = cfg.transport
    kwargs: dict[str, Any] = {"path": t.path, "prediction": t.prediction, "time_sampling": t.time_sampling}
    for key in ("loss_weight", "train_eps", "sample_eps"):
        if getattr(t, key) is not None:
            kwargs[key] = getattr(t, key)
    kwargs.update(t.extra)
    accepted = _accepts(Transport) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"config key 'transport.extra': Transport does not take {', '.join(unknown)}; "
                          f"it accepts {', '.join(sorted(accepted))}")
    return Transport(**kwargs)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based count of steps taken): linear warm-up, then
    constant or cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases, norms and other 1-D parameters; fused on CUDA) and its
    warm-up + constant / cosine schedule over ``train.steps``."""
    o, steps = cfg.optim, cfg.train.steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": o.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    on_cuda = bool(trainable) and trainable[0].device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **({"fused": True} if on_cuda else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup=o.warmup_steps, total=steps, schedule=o.lr_schedule, min_ratio=o.min_lr_ratio),
    )
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------------
# Autoencoder and feature extractor
# ---------------------------------------------------------------------------------------------------

_AUTOENCODERS: dict[str, Any] = {}


def build_autoencoder(data_info: DataInfo) -> Any:
    """The run's decoder (``data.autoencoder``), built once per process; None for pixel data."""
    if not data_info.autoencoder:
        return None
    key = json.dumps([data_info.autoencoder, data_info.autoencoder_kwargs], sort_keys=True)
    if key not in _AUTOENCODERS:
        from .vae import load_autoencoder

        _AUTOENCODERS[key] = load_autoencoder(data_info.autoencoder, **data_info.autoencoder_kwargs).eval()
    return _AUTOENCODERS[key]


def build_extractor(cfg: Config, data_info: DataInfo) -> Any:
    """The FID/KID feature extractor: ``eval.extractor`` (with ``eval.extractor_kwargs``), else the
    dataset's own, else the shipped Fashion-MNIST net (with a warning: its numbers mean little elsewhere)."""
    from .metrics import build_extractor as build_named

    name = cfg.eval.extractor or data_info.feature_extractor
    if name is None:
        name = DEFAULT_EXTRACTOR
        log.warning("dataset %r names no feature network: FID/KID use %r (a Fashion-MNIST classifier); set "
                    "eval.extractor=torchscript with eval.extractor_kwargs.path=YOUR_NET.pt for your data",
                    data_info.name, name)
    return build_named(name, **cfg.eval.extractor_kwargs)


# ---------------------------------------------------------------------------------------------------
# Checkpoint -> run
# ---------------------------------------------------------------------------------------------------


class ScanOrderError(CheckpointError):
    """A checkpoint whose layers were trained on other scan paths than its schedule resolves to now."""


@dataclass
class Run:
    """A trained run as sampling and eval use it."""

    model: nn.Module  # eval mode, on the requested device
    transport: Any
    cfg: Config  # the checkpoint's config with the command's overrides
    data_info: DataInfo
    checkpoint: Checkpoint


def _overridable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_OVERRIDABLE)


def checkpoint_config(ckpt: Checkpoint, overrides: list[str] | None = None, *, weights_fixed: bool) -> Config:
    """The checkpoint's saved config with ``key=value`` overrides, the same way ``zigscan train`` applies
    them to a file. ``weights_fixed`` (sample, eval): only ``RUN_OVERRIDABLE`` keys may change, since the
    weights fix the network, its data and its transport."""
    overrides = list(overrides or [])
    if weights_fixed:
        fixed = [o.partition("=")[0].strip() for o in overrides if not _overridable(o.partition("=")[0].strip())]
        if fixed:
            raise ConfigError(
                f"cannot override {', '.join(map(repr, fixed))} of a trained run: its weights fix the model, the data "
                f"and the transport. Keys that may change: {', '.join(k + '.*' if '.' not in k else k for k in RUN_OVERRIDABLE)}"
                "; train a new run to change the others"
            )
    return config_from_dict(apply_overrides(ckpt.config, overrides))


def check_scan_paths(model: nn.Module, recorded: list[str] | None, *, where: str | Path) -> None:
    """Raise ``ScanOrderError`` when ``model``'s per-layer scan paths differ from ``recorded`` (the names
    saved at training time); ``recorded=None`` (a network without scan paths) checks nothing."""
    if recorded is None:
        return
    built = [p.name for p in getattr(model, "scan_paths", [])]
    recorded = list(recorded)
    if built == recorded:
        return
    schedule = (getattr(model, "config", None) or {}).get("schedule")
    if len(built) != len(recorded):
        raise ScanOrderError(f"checkpoint {str(where)!r} records {len(recorded)} scan paths, the network built "
                             f"from its config has {len(built)} layers")
    layers = "; ".join(f"layer {i}: trained {r!r}, now {b!r}" for i, (r, b) in enumerate(zip(recorded, built)) if r != b)
    raise ScanOrderError(
        f"checkpoint {str(where)!r} was trained with other scan orders than schedule {schedule!r} resolves to now "
        f"({layers}); its weights only fit the trained orders. A plugin or a registered schedule changed: "
        f"restore the definition used for training, or register the trained orders {recorded} under that name."
    )


def _check_network(model: nn.Module, recorded: dict[str, Any], *, where: str | Path) -> None:
    """Raise ``CheckpointError`` when ``model.config`` and the recorded network config disagree on a key
    both have (keys only one side knows are left alone, so older checkpoints keep loading)."""
    now = json.loads(json.dumps(getattr(model, "config", None) or {}, default=str))
    diffs = [f"{k}: checkpoint {recorded[k]!r}, now {now[k]!r}" for k in sorted(set(now) & set(recorded))
             if k != "scan_paths" and now[k] != recorded[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {str(where)!r}: its config now builds another network than the one "
                              f"saved ({'; '.join(diffs)}); a preset or plugin changed since training")


def load_weights(model: nn.Module, ckpt: Checkpoint, weights: str = "ema") -> None:
    """Put the checkpoint's ``weights`` ("model" or "ema") into ``model``, after checking its scan paths
    and its network config against the recorded ones (the one way a checkpoint's weights enter a network)."""
    check_scan_paths(model, ckpt.model_config.get("scan_paths"), where=ckpt.path)
    _check_network(model, ckpt.model_config, where=ckpt.path)
    state = ckpt.ema if weights == "ema" else ckpt.model
    if not state:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: the {weights!r} weights were not loaded")
    model.load_state_dict(state)


def load_run(path: str | Path, *, device: str | torch.device = "cpu", weights: str = "ema",
             overrides: list[str] | None = None) -> Run:
    """A checkpoint (any path ``resolve_checkpoint`` accepts) as a run: its network rebuilt from its saved
    config by ``build_model``, scan paths checked, ``weights`` loaded, in eval mode on ``device``."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = load_checkpoint(path, device="cpu", training=False, which=(weights,))
    cfg = checkpoint_config(ckpt, overrides, weights_fixed=True)
    data_info = DataInfo.from_dict(ckpt.state.get("data_info") or {})
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, data_info)
    load_weights(model, ckpt, weights)
    return Run(model.to(device).eval(), build_transport(cfg), cfg, data_info, ckpt)
