"""The mixer registry: ``get_mixer(name, d_model, impl="auto", **kwargs)``, ``list_mixers(pattern)``.

Entries are ``MixerSpec`` objects, registered by plugins through ``zigscan_register_mixers`` (the
built-ins through the plugin ``zigscan``) or by user code with ``register_mixer``. Each carries the GPU
verification record of its kernel path (``kernel_check``; the built-ins' table is ``verification.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from zigscan.scanpaths.registries import Registry, plugin_loader

from .base import IMPLS, Impl, Mixer
from .verification import KERNEL_CHECKS, KernelCheck

__all__ = ["MixerSpec", "MIXERS", "get_mixer", "list_mixers", "register_mixer"]


@dataclass(frozen=True)
class MixerSpec:
    """A registered mixer.

    Attributes:
        name: registry key, e.g. ``"gla"``.
        factory: ``factory(d_model, impl=..., **kwargs) -> nn.Module`` mapping [B, L, D] -> [B, L, D].
        description: one line for listings.
        kernel_package: the optional package of its fast path (``None`` if pure PyTorch).
        defaults: keyword arguments the factory gets unless overridden (e.g. ``{"directions": 4}``).
        causal: output at step k depends only on tokens <= k. False for bidirectional mixers
            (``attention``, ``bimamba``, ``parallel-K``); tests check causality where it is declared.
        kernel_check: whether (and where) the kernel path was verified on a GPU. Built-ins get their row of
            ``verification.KERNEL_CHECKS``; a kernel mixer without a record counts as unverified, so
            ``impl="auto"`` runs its reference (``impl="kernel"`` still runs the kernel).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str = ""
    kernel_package: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    causal: bool = True
    kernel_check: KernelCheck | None = None

    def __post_init__(self) -> None:
        builtin = getattr(self.factory, "__module__", "").startswith("zigscan.backbones.mixers.")
        if self.kernel_check is None and builtin and self.name in KERNEL_CHECKS:
            object.__setattr__(self, "kernel_check", KERNEL_CHECKS[self.name])

    def build(self, d_model: int, impl: Impl = "auto", **kwargs: Any) -> nn.Module:
        if impl not in IMPLS:
            raise ValueError(f"mixer {self.name!r}: impl must be one of {IMPLS}, got {impl!r}")
        kw = {**self.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        _check_kwargs(self, kw)
        module = self.factory(d_model, impl=impl, **kw)
        if isinstance(module, Mixer):
            module._mixer_spec = self  # its name and kernel_check, for impl="auto" (verification.spec_of)
        return module


def _check_kwargs(spec: MixerSpec, kwargs: dict[str, Any]) -> None:
    """Unknown keyword arguments get an error listing the accepted ones (not a TypeError deep inside)."""
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in ("d_model", "impl", "self") and p.kind is not p.VAR_POSITIONAL]
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise TypeError(
            f"mixer {spec.name!r} does not take {', '.join(map(repr, bad))}; it accepts: {', '.join(accepted) or 'nothing'}"
        )


def _spec_type() -> type:
    return MixerSpec


MIXERS: Registry = Registry(
    "mixer", list_command="zigscan mixers list", loader=plugin_loader("zigscan_register_mixers", _spec_type)
)


def get_mixer(name: str, d_model: int, impl: Impl = "auto", **kwargs: Any) -> nn.Module:
    """Build the mixer ``name`` for width ``d_model``: a module mapping [B, L, D] -> [B, L, D]."""
    return MIXERS.get(name).build(d_model, impl=impl, **kwargs)


def list_mixers(pattern: str = "*") -> list[str]:
    """Sorted mixer names matching a shell-style wildcard."""
    return MIXERS.names(pattern)


def register_mixer(
    name: str,
    *,
    description: str = "",
    kernel_package: str | None = None,
    causal: bool = True,
    kernel_check: KernelCheck | None = None,
    override: bool = False,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory (or Mixer subclass) from user code::

        @register_mixer("my-mixer", description="...")
        class MyMixer(Mixer): ...

    A mixer with a kernel passes ``kernel_check=verification.verified(...)`` once its kernel is checked on a
    GPU; until then ``impl="auto"`` runs its reference.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = MixerSpec(name, factory, description or (factory.__doc__ or "").strip().split("\n")[0],
                         kernel_package, dict(defaults), causal, kernel_check)
        MIXERS.register(name, spec, source="user", override=override)
        return factory

    return deco
