"""``random``: a seeded random permutation (a baseline: no locality at all).

The seed is part of the path's identity: ``random`` uses seed 0, ``random@7`` seed 7 (resolved by
``get_scanpath``), so a model that saves its schedule by name rebuilds the same orders. The order of a
shape depends only on (seed, shape): ``torch.Generator`` seeded with a hash of both, on the CPU.
"""

from __future__ import annotations

import torch

from ..base import ScanPath, Shape

__all__ = ["RandomScanPath", "scanpaths"]

DEFAULT_SEED = 0


class RandomScanPath(ScanPath):
    """A random permutation of the tokens, reproducible from ``seed`` (any shape, 2D or 3D via ``ndim``)."""

    def __init__(self, seed: int = DEFAULT_SEED, *, ndim: int = 2, base_name: str = "random") -> None:
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"random scan path: seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self.base_name = base_name
        self.name = base_name if seed == DEFAULT_SEED else f"{base_name}@{seed}"
        self.ndim = ndim  # type: ignore[assignment]
        self.continuous = False
        self.description = f"random permutation, seed {seed} (`{base_name}@SEED` for another seed)"

    def variant(self, arg: str) -> ScanPath:
        """``random@SEED``: the same family with another seed."""
        try:
            seed = int(arg)
        except ValueError:
            raise ValueError(f"{self.base_name}@SEED takes an integer seed >= 0, got {arg!r}") from None
        if seed == self.seed:
            return self
        return RandomScanPath(seed, ndim=self.ndim, base_name=self.base_name)

    def _build(self, shape: Shape) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        g = torch.Generator().manual_seed(_mix(self.seed, shape))
        return torch.randperm(n, generator=g)  # [L]


def _mix(seed: int, shape: Shape) -> int:
    """A stable 63-bit seed from (seed, shape) (Python's ``hash`` of ints/tuples is not salted, but
    spell it out so it never depends on the interpreter)."""
    h = 1469598103934665603
    for v in (seed, *shape):
        h = ((h ^ (v & 0xFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def scanpaths() -> list[ScanPath]:
    return [RandomScanPath()]
