"""Model presets (``zigma-B/2``, ``dit-B/2``, ...): the MODELS registry, ``create_model``, save / load.

A preset is a name and the keyword arguments of ``ZigMa``; ``create_model(preset, mixer=..., schedule=...,
**overrides)`` builds it (None overrides are dropped; an unknown one is an error listing the accepted
names). ``zigma-*`` presets are ZigMa (mixer ``mamba``, schedule ``zigzag-8``, no MLP); ``dit-*`` are the
same network with mixer ``attention`` and an MLP (ratio 4), i.e. DiT. Sizes follow DiT (S 384/12,
L 1024/24, XL 1152/28) and the ZigMa paper (B 768/24); ``zigma-T/2`` is a tiny laptop-CPU model.

``model.config`` is a JSON-serialisable dict that rebuilds the network (``model_from_config``);
``save_model`` / ``load_model`` write / read a folder with ``model.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zigscan.scanpaths.registries import Registry, plugin_loader

__all__ = [
    "ModelSpec",
    "MODELS",
    "PRESETS",
    "builtin_models",
    "list_models",
    "create_model",
    "model_from_config",
    "save_model",
    "load_model",
    "ModelFileError",
]

FORMAT = "zigscan-zigma/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelSpec:
    """A named network preset: ``name`` and the keyword arguments of the network it builds."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _spec_type() -> type:
    return ModelSpec


MODELS: Registry = Registry(
    "model preset", list_command="zigscan models list", loader=plugin_loader("zigscan_register_models", _spec_type)
)


#################################################################################
#                                    Presets                                    #
#################################################################################

_ZIGMA: dict[str, Any] = dict(mixer="mamba", schedule="zigzag-8", mlp_ratio=0.0)
_DIT: dict[str, Any] = dict(mixer="attention", schedule="sweep", mlp_ratio=4.0)
_TINY: dict[str, Any] = dict(input_size=28, in_channels=1, num_classes=10)  # Fashion-MNIST-sized

PRESETS: dict[str, dict[str, Any]] = {
    "zigma-T/2": dict(**_ZIGMA, **_TINY, hidden_size=128, depth=6, patch_size=2),
    "zigma-S/2": dict(**_ZIGMA, hidden_size=384, depth=12, patch_size=2),
    "zigma-S/4": dict(**_ZIGMA, hidden_size=384, depth=12, patch_size=4),
    "zigma-B/2": dict(**_ZIGMA, hidden_size=768, depth=24, patch_size=2),
    "zigma-B/4": dict(**_ZIGMA, hidden_size=768, depth=24, patch_size=4),
    "zigma-L/2": dict(**_ZIGMA, hidden_size=1024, depth=24, patch_size=2),
    "zigma-XL/2": dict(**_ZIGMA, hidden_size=1152, depth=28, patch_size=2),
    "dit-S/2": dict(**_DIT, hidden_size=384, depth=12, patch_size=2, mixer_kwargs={"num_heads": 6}),
    "dit-B/2": dict(**_DIT, hidden_size=768, depth=12, patch_size=2, mixer_kwargs={"num_heads": 12}),
    "dit-L/2": dict(**_DIT, hidden_size=1024, depth=24, patch_size=2, mixer_kwargs={"num_heads": 16}),
    "dit-XL/2": dict(**_DIT, hidden_size=1152, depth=28, patch_size=2, mixer_kwargs={"num_heads": 16}),
}


def _describe(kw: dict[str, Any]) -> str:
    mlp = f", MLP x{kw['mlp_ratio']:g}" if kw.get("mlp_ratio") else ""
    return f"width {kw['hidden_size']}, depth {kw['depth']}, patch {kw['patch_size']}, {kw['mixer']}{mlp}, {kw['schedule']}"


def builtin_models() -> list[ModelSpec]:
    return [ModelSpec(name, dict(kw), _describe(kw)) for name, kw in PRESETS.items()]


def list_models(pattern: str = "*") -> list[str]:
    """Sorted preset names matching a shell-style wildcard."""
    return MODELS.names(pattern)


#################################################################################
#                                 Construction                                  #
#################################################################################


def _accepted() -> list[str]:
    from .zigma import ZigMa

    return [n for n in inspect.signature(ZigMa.__init__).parameters if n != "self"]


def _check_names(kwargs: dict[str, Any], where: str) -> None:
    accepted = _accepted()
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise TypeError(f"{where}: unknown argument(s) {', '.join(map(repr, bad))}. Accepted: {', '.join(accepted)}")


def create_model(preset: str, mixer: str | None = None, schedule: str | list[str] | None = None,
                 **overrides: Any) -> torch.nn.Module:
    """Build the network of ``preset`` (``list_models()``), optionally with another mixer / schedule and
    overridden arguments (DiT's names: input_size, patch_size, in_channels, hidden_size, depth, num_classes;
    plus num_frames, mlp_ratio, mixer_kwargs, text_encoder, pos_embed, class_dropout_prob, ...)."""
    from .zigma import ZigMa

    spec: ModelSpec = MODELS.get(preset)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_names(overrides, f"create_model({preset!r})")
    kw = dict(spec.kwargs)
    if mixer is not None:
        if mixer != kw.get("mixer") and "mixer_kwargs" not in overrides:
            kw.pop("mixer_kwargs", None)  # the preset's mixer options belong to its own mixer
        kw["mixer"] = mixer
    if schedule is not None:
        kw["schedule"] = schedule
    kw.update(overrides)
    kw.setdefault("name", preset)
    return ZigMa(**kw)


def model_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a network from ``model.config`` (weights are freshly initialised)."""
    from .zigma import ZigMa

    if not isinstance(config, dict):
        raise TypeError(f"model config must be a dict (model.config), got {type(config).__name__}")
    cfg = dict(config)
    recorded = cfg.pop("scan_paths", None)
    _check_names(cfg, "model_from_config")
    model = ZigMa(**cfg)
    built = [p.name for p in model.scan_paths]
    if recorded is not None and list(recorded) != built:
        warnings.warn(
            f"schedule {cfg.get('schedule')!r} now resolves to other scan paths than when the model was saved; "
            "rebuilding with the recorded per-layer paths", stacklevel=2)
        model = ZigMa(**{**cfg, "schedule": list(recorded)})
    return model


#################################################################################
#                                  Save / load                                  #
#################################################################################


class ModelFileError(RuntimeError):
    """A saved model that cannot be read, or whose weights do not fit its config."""


def save_model(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``path/model.safetensors`` (weights, config in its metadata) and ``path/config.json``."""
    from safetensors.torch import save_file

    if not hasattr(model, "config"):
        raise TypeError(f"save_model expects a ZigMa network (with .config), got {type(model).__name__}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    try:
        text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"model.config is not JSON-serialisable ({exc}); keep mixer_kwargs to plain values") from None
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "config": json.dumps(config)})
    (folder / CONFIG_FILE).write_text(text + "\n")
    return folder


def _read_config(folder: Path, weights: Path) -> dict[str, Any]:
    from safetensors import safe_open

    cfg_file = folder / CONFIG_FILE
    if cfg_file.exists():
        try:
            return json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{cfg_file} is not valid JSON ({exc}); re-save the model or fix the file") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelFileError(f"{weights} is not a readable safetensors file ({exc})") from None
    if "config" not in meta:
        raise ModelFileError(f"no {CONFIG_FILE} next to {weights} and no config in its metadata: cannot rebuild")
    return json.loads(meta["config"])


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Read a model written by ``save_model`` (the folder, or its ``model.safetensors``)."""
    from safetensors.torch import load_file

    p = Path(path)
    folder, weights = (p, p / WEIGHTS_FILE) if p.is_dir() else (p.parent, p)
    if not weights.exists():
        raise FileNotFoundError(f"no saved model at {path}: expected a folder with {WEIGHTS_FILE} and {CONFIG_FILE}")
    config = _read_config(folder, weights)
    try:
        model = model_from_config(config)
    except Exception as exc:
        raise ModelFileError(f"the config in {folder} does not build a network: {type(exc).__name__}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:
        raise ModelFileError(f"{weights} is corrupt or not a safetensors file ({type(exc).__name__}: {exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {len(missing)} (e.g. {missing[:3]})" if missing else "",
                 f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with other shapes (e.g. {wrong[:3]})" if wrong else ""]
        raise ModelFileError(
            f"the weights in {weights} do not match the network of its config ({'; '.join(x for x in parts if x)}). "
            "The config and the weights come from different models, or the file was edited."
        )
    model.load_state_dict(state)
    return model.to(device)
