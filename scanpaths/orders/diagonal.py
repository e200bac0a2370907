"""``diagonal``: JPEG-style anti-diagonal snake from the top-left corner. Steps along a diagonal move
to an 8-neighbour (diagonally), so the path is not 4-neighbour continuous."""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape

__all__ = ["DiagonalScanPath", "scanpaths"]


class DiagonalScanPath(ScanPath):
    def __init__(self) -> None:
        super().__init__()
        self.name = "diagonal"
        self.ndim = 2
        self.continuous = False
        self.description = "anti-diagonal snake from the top-left (JPEG zigzag); diagonal steps"

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        d = (r + c).ravel()  # diagonal of each cell
        along = np.where(d % 2 == 0, -r.ravel(), r.ravel())  # even diagonals go up-right, odd down-left
        return np.lexsort((along, d))  # [L] sort by diagonal, then along it


def scanpaths() -> list[ScanPath]:
    return [DiagonalScanPath()]
