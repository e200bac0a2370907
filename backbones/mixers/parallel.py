"""``parallel-K`` (K = 1..8): K scan directions in one block, each with its own Mamba, outputs averaged.

The ZigMa paper's "parallel" baseline: instead of one path per layer, every layer scans K paths at once.
Direction k has its own full Mamba v1 parameters (``mambas.k.*``, each keyed like ``mamba_ssm`` Mamba).

Which K paths (the ``shape`` contract): a mixer sees only [B, L, D]. When told the token grid, the
directions are the zigzag paths ``zigzag-s0`` .. ``zigzag-s(K-1)`` over it (``spatial-zigzag-sk`` for a
video grid (T, H, W)); give it as ``mixer.shape = (H, W)`` (ZigMa sets this attribute on every mixer that
has one), as ``forward(x, shape=(H, W))`` or as ``get_mixer("parallel-4", d, shape=(H, W))``. The L tokens
must then be in raster order over that grid, and prod(shape) must equal L (else ValueError). Without a
shape, directions alternate forward / reverse over the sequence (k even: as given, k odd: flipped).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from .base import Impl, Mixer
from .mamba import Mamba, MambaConfig
from .modules import MAMBA_INSTALL_HINT, MAMBA_PACKAGE
from .registry import MixerSpec

__all__ = ["ParallelMamba", "MAX_DIRECTIONS"]

MAX_DIRECTIONS = 8  # the paper's eight zigzag paths s0..s7


class ParallelMamba(Mixer):
    """K Mambas over K scan orders of the same tokens, averaged. Not causal (K >= 2)."""

    kernel_package = MAMBA_PACKAGE
    install_hint = MAMBA_INSTALL_HINT

    def __init__(
        self,
        d_model: int,
        impl: Impl = "auto",
        *,
        directions: int = 2,
        shape: Sequence[int] | None = None,
        **mamba_kwargs,
    ) -> None:
        super().__init__(d_model, impl)
        if not isinstance(directions, int) or not 1 <= directions <= MAX_DIRECTIONS:
            raise ValueError(f"parallel: directions must be an int in 1..{MAX_DIRECTIONS}, got {directions!r}")
        accepted = [f.name for f in dataclasses.fields(MambaConfig)]
        bad = sorted(set(mamba_kwargs) - set(accepted))
        if bad:
            raise TypeError(
                f"parallel-{directions} does not take {', '.join(map(repr, bad))}; it accepts: directions, shape, "
                + ", ".join(accepted)
            )
        self.directions = directions
        self.shape = tuple(shape) if shape is not None else None
        self.mambas = nn.ModuleList(Mamba(d_model, impl, **mamba_kwargs) for _ in range(directions))
        self._perm_cache: dict[tuple, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}

    def extra_repr(self) -> str:
        return f"directions={self.directions}, shape={self.shape}"

    # ------------------------------------------------------------------ directions
    def permutations(self, L: int, shape: Sequence[int] | None, device: torch.device) -> list:
        """Per direction: (order, inverse) LongTensors [L], or None for the identity. Cached."""
        key = (L, tuple(shape) if shape is not None else None, str(device))
        if key not in self._perm_cache:
            self._perm_cache[key] = self._build_permutations(L, key[1], device)
        return self._perm_cache[key]

    def _build_permutations(self, L: int, shape: tuple[int, ...] | None, device: torch.device) -> list:
        if shape is None:
            rev = torch.arange(L - 1, -1, -1, device=device)
            return [None if k % 2 == 0 else (rev, rev) for k in range(self.directions)]
        if len(shape) not in (2, 3) or math.prod(shape) != L:
            raise ValueError(
                f"parallel-{self.directions}: shape {shape} does not describe the {L} tokens of the input; "
                "give the grid (H, W) or (T, H, W) with prod == L, or set shape=None for forward/reverse scans"
            )
        from zigscan.scanpaths import get_scanpath

        prefix = "zigzag-s" if len(shape) == 2 else "spatial-zigzag-s"
        perms = []
        for k in range(self.directions):
            path = get_scanpath(f"{prefix}{k}")
            perms.append((path.order(shape, device=device), path.inverse(shape, device=device)))
        return perms

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """x: [B, L, D] (raster order over ``shape`` when given) -> [B, L, D]."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects input [B, L, {self.d_model}], got {tuple(x.shape)}")
        return self._mix(x, self.use_kernel(x), self.shape if shape is None else shape)

    def prepare_kernel(self) -> None:
        for mamba in self.mambas:  # the inner Mambas never decide themselves: the block calls their paths
            mamba.prepare_kernel()

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, False, self.shape)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, True, self.shape)

    def _mix(self, x: torch.Tensor, kernel: bool, shape: Sequence[int] | None) -> torch.Tensor:
        out = None
        for mamba, perm in zip(self.mambas, self.permutations(x.shape[1], shape, x.device)):
            xs = x if perm is None else x[:, perm[0]]  # (B, L, D) in direction k's order
            ys = mamba.forward_kernel(xs) if kernel else mamba.forward_reference(xs)
            ys = ys if perm is None else ys[:, perm[1]]  # (B, L, D) back to the input order
            out = ys if out is None else out + ys
        return out / self.directions  # (B, L, D)


SPECS = [
    MixerSpec(
        f"parallel-{k}", ParallelMamba,
        f"{k} scan direction{'s' if k > 1 else ''} in one block (zigzag s0..s{k - 1} over the grid), "
        "each with its own Mamba, averaged",
        kernel_package=MAMBA_PACKAGE, defaults={"directions": k}, causal=False,  # with a grid even one zigzag direction is not raster-causal
    )
    for k in range(1, MAX_DIRECTIONS + 1)
]
