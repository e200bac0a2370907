"""``bimamba``: Vision-Mamba style bidirectional Mamba (Vim, "bimamba v2"), the ZigMa paper's baseline.

One block, two scans: a forward scan and a backward scan over the flipped sequence, each with its own
conv1d / x_proj / dt_proj / A_log / D (the backward ones suffixed ``_b``: ``conv1d_b``, ``x_proj_b``,
``dt_proj_b``, ``A_b_log``, ``D_b``, as in Vim's ``mamba_simple.py``), sharing ``in_proj`` and
``out_proj``. As in Vim with ``if_devide_out=True``, the two gated scan outputs are averaged before
``out_proj``: ``out_proj((y_fwd + flip(y_bwd)) / 2)``. Not causal. State dicts match Vim's
(``bimamba_type="v2"``); mamba_ssm itself has no bidirectional layer, so there is no ``build_upstream``:
the kernel path runs mamba_ssm's ``selective_scan_fn`` per direction with upstream's wiring.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Impl, Mixer
from .mamba import MambaCoreConfig, core_kernel, core_reference, decide_fused_conv, init_core
from .modules import MAMBA_INSTALL_HINT, MAMBA_PACKAGE, configure, takes_config
from .registry import MixerSpec

__all__ = ["BiMamba"]

DIRECTIONS = ("", "_b")  # parameter-name suffixes of the forward and the backward scan (Vim's naming)


@takes_config(MambaCoreConfig)
class BiMamba(Mixer):
    """Bidirectional Mamba over [B, L, D]: forward + backward scans with separate SSM parameters."""

    kernel_package = MAMBA_PACKAGE
    install_hint = MAMBA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, MambaCoreConfig(**config).resolved(d_model))  # also sets self.d_state, ...
        self.d_inner = int(cfg.expand * d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=cfg.bias)
        for suffix in DIRECTIONS:
            init_core(self, suffix, self.d_inner, cfg)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.bias)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d_inner) each
        y_f = core_reference(self, "", xi, z)  # (B, L, d_inner)
        y_b = core_reference(self, "_b", xi.flip(1), z.flip(1)).flip(1)  # (B, L, d_inner)
        return self.out_proj((y_f + y_b) / 2)  # (B, L, D)

    def prepare_kernel(self) -> None:
        decide_fused_conv(self)  # causal-conv1d's kernel or PyTorch's conv1d, decided once

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*d_inner, L)
        xi, z = xz.chunk(2, dim=1)  # (B, d_inner, L)
        y_f = core_kernel(self, "", xi, z)
        y_b = core_kernel(self, "_b", xi.flip(-1), z.flip(-1)).flip(-1)  # (B, d_inner, L)
        return self.out_proj(((y_f + y_b) / 2).transpose(1, 2))  # (B, L, D)


SPECS = [
    MixerSpec("bimamba", BiMamba, "Vision-Mamba bidirectional Mamba: forward + backward scans, separate SSM params",
              kernel_package=MAMBA_PACKAGE, causal=False),
]
