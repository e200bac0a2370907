"""``zigzag-s0`` ... ``zigzag-s7``: the eight continuous boustrophedon ("snake") paths of ZigMa (Fig. 3c).

With corners TL=(0,0), TR=(0,W-1), BL=(H-1,0), BR=(H-1,W-1):
s0 row-snake from TL, s1 column-snake from TL, s2 row-snake from TR, s3 column-snake from TR,
s4 row-snake from BL, s5 column-snake from BL, s6 row-snake from BR, s7 column-snake from BR.
A row-snake visits the start row fully (moving away from the start corner's side), then the next row
toward the opposite side in reverse, and so on. Same order as ``zigzag_path`` in the official code
(CompVis/zigma, utils/utils_zigzag.py: lr/tb pairs for starts TL, TR, BL, BR), for any H, W.
"""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape
from ._grid import CORNERS, Coords, raster, symmetry

__all__ = ["ZigzagScanPath", "row_snake", "scanpaths"]


def row_snake(H: int, W: int) -> Coords:
    """Row-snake from TL on (H, W): even rows left->right, odd rows right->left. (rows [L], cols [L])."""
    r = np.repeat(np.arange(H), W)  # [L]
    j = np.tile(np.arange(W), H)  # [L]
    c = np.where(r % 2 == 0, j, W - 1 - j)
    return r, c


class ZigzagScanPath(ScanPath):
    """``zigzag-sK``: the snake of symmetry K (start corner ``CORNERS[K // 2]``, column-major if K odd)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if not 0 <= k < 8:
            raise ValueError(f"zigzag index must be in 0..7, got {k}")
        self.k = k
        self.name = f"zigzag-s{k}"
        self.ndim = 2
        self.continuous = True
        kind = "column" if k % 2 else "row"
        self.description = f"{kind}-snake from {CORNERS[k // 2]} (ZigMa Fig. 3c, s{k})"

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        r, c = symmetry(row_snake, H, W, self.k)
        return raster(r, c, W)  # [L]


def scanpaths() -> list[ScanPath]:
    return [ZigzagScanPath(k) for k in range(8)]
