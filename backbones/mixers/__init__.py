"""Sequence mixers behind one interface: ``mixer(x: [B, L, D]) -> [B, L, D]``.

Each built-in lives in its own module, which defines ``SPECS: list[MixerSpec]``; ``builtin_mixers``
collects them for the built-in plugin. Fast kernels come from optional packages (mamba-ssm,
flash-linear-attention); every mixer has a pure-PyTorch reference with the same parameters. The parts the
mixers share (norms, LoRA, short convolution, initialisers, the kernel packages' constants, the config
dataclass base) are in ``modules``; a mixer file only wires them.
"""

from __future__ import annotations

import importlib

from .base import IMPLS, Impl, KernelUnavailableError, Mixer, kernel_available
from .registry import MIXERS, MixerSpec, get_mixer, list_mixers, register_mixer

__all__ = [
    "IMPLS",
    "Impl",
    "KernelUnavailableError",
    "Mixer",
    "MixerSpec",
    "MIXERS",
    "builtin_mixers",
    "get_mixer",
    "kernel_available",
    "list_mixers",
    "register_mixer",
]

# One module per mixer family; each defines SPECS.
_BUILTIN_MODULES = (
    "attention",
    "mamba",
    "mamba2",
    "bimamba",
    "parallel",
    "gla",
    "rwkv6",
    "rwkv7",
    "deltanet",
    "gated_deltanet",
    "hgrn2",
    "simple_gla",
    "retnet",
)


def builtin_mixers() -> list[MixerSpec]:
    specs: list[MixerSpec] = []
    for mod in _BUILTIN_MODULES:
        specs.extend(importlib.import_module(f"{__name__}.{mod}").SPECS)
    return specs
