"""``sweep``: raster order, row by row, left to right (the paper's baseline; not continuous)."""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape

__all__ = ["SweepScanPath", "scanpaths"]


class SweepScanPath(ScanPath):
    """Raster order: ``order = arange(H*W)``. Jumps from the end of a row to the start of the next."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "sweep"
        self.ndim = 2
        self.continuous = False
        self.description = "raster order, row by row, left to right (paper's baseline)"

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        return np.arange(H * W, dtype=np.int64)  # [L]


def scanpaths() -> list[ScanPath]:
    return [SweepScanPath()]
