"""Video orders over (T, H, W) tokens, raster index ``t*H*W + r*W + c``.

* ``video-zigzag``: one continuous path through the volume. Frame 0 is the row-snake ``zigzag-s0``;
  every odd frame is that snake reversed, so it starts on the cell where the previous frame ended
  (one step along time), and every even frame starts again where the odd frame ended.
* ``spatial-zigzag-s0`` ... ``s7``: factorized, ``segments = T``: frame by frame, each frame scanned by
  ``zigzag-sK`` (the frames are independent sub-sequences folded into the batch).
* ``temporal`` / ``temporal-reverse``: factorized, ``segments = H*W``: spatial sites in raster order,
  each scanned along time (t = 0..T-1, or T-1..0). The inverse is the true inverse permutation (the
  base class computes it), so after rearranging frame t lands back on frame t; the official code
  paired the reversed time order with the wrong inverse (frame t -> T-1-t).
"""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape, check_shape
from ._grid import CORNERS, raster, symmetry
from .zigzag import row_snake

__all__ = ["VideoZigzagScanPath", "SpatialZigzagScanPath", "TemporalScanPath", "scanpaths"]


def _snake(H: int, W: int, k: int) -> np.ndarray:
    r, c = symmetry(row_snake, H, W, k)
    return raster(r, c, W)  # [H*W]


class VideoZigzagScanPath(ScanPath):
    def __init__(self) -> None:
        super().__init__()
        self.name = "video-zigzag"
        self.ndim = 3
        self.continuous = True
        self.description = "one continuous snake through the volume: frame snakes joined end to start"

    def _build(self, shape: Shape) -> np.ndarray:
        T, H, W = shape
        fwd = _snake(H, W, 0)  # [HW]
        t = np.arange(T)[:, None]  # [T, 1]
        frames = np.where(t % 2 == 0, fwd[None, :], fwd[None, ::-1])  # [T, HW]
        return (frames + t * (H * W)).ravel()  # [L]


class SpatialZigzagScanPath(ScanPath):
    def __init__(self, k: int) -> None:
        super().__init__()
        if not 0 <= k < 8:
            raise ValueError(f"zigzag index must be in 0..7, got {k}")
        self.k = k
        self.name = f"spatial-zigzag-s{k}"
        self.ndim = 3
        self.continuous = True
        kind = "column" if k % 2 else "row"
        self.description = f"each frame by zigzag-s{k} ({kind}-snake from {CORNERS[k // 2]}); segments = T"

    def segments(self, shape) -> int:
        return check_shape(shape, 3, self.name)[0]

    def _build(self, shape: Shape) -> np.ndarray:
        T, H, W = shape
        t = np.arange(T)[:, None]  # [T, 1]
        return (_snake(H, W, self.k)[None, :] + t * (H * W)).ravel()  # [L]


class TemporalScanPath(ScanPath):
    def __init__(self, reverse: bool = False) -> None:
        super().__init__()
        self.reverse = reverse
        self.name = "temporal-reverse" if reverse else "temporal"
        self.ndim = 3
        self.continuous = True
        way = "T-1..0" if reverse else "0..T-1"
        self.description = f"each spatial site along time ({way}); segments = H*W"

    def segments(self, shape) -> int:
        _, H, W = check_shape(shape, 3, self.name)
        return H * W

    def _build(self, shape: Shape) -> np.ndarray:
        T, H, W = shape
        t = np.arange(T)[::-1] if self.reverse else np.arange(T)
        site = np.arange(H * W)[:, None]  # [HW, 1]
        return (site + t[None, :] * (H * W)).ravel()  # [L] site-major, time inside


def scanpaths() -> list[ScanPath]:
    return (
        [VideoZigzagScanPath()]
        + [SpatialZigzagScanPath(k) for k in range(8)]
        + [TemporalScanPath(False), TemporalScanPath(True)]
    )
