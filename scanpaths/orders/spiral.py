"""``spiral``: clockwise spiral from the top-left corner inward, ring by ring (continuous, any H, W)."""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape

__all__ = ["SpiralScanPath", "spiral_rank", "scanpaths"]


def spiral_rank(H: int, W: int) -> np.ndarray:
    """Step at which each cell is visited, [H, W] (vectorized: ring offset + position on the ring).

    Ring k is the border of the (H-2k) x (W-2k) rectangle at (k, k): top row left->right, right column
    down, bottom row right->left, left column up; it ends at (k+1, k), next to the start (k+1, k+1) of
    ring k+1."""
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    k = np.minimum(np.minimum(r, c), np.minimum(H - 1 - r, W - 1 - c))  # ring of each cell
    h, w = H - 2 * k, W - 2 * k  # size of the ring's rectangle
    start = H * W - h * w  # cells in the rings outside
    top = r == k
    right = ~top & (c == W - 1 - k)
    bottom = ~top & ~right & (r == H - 1 - k)
    pos = np.where(
        top,
        c - k,
        np.where(
            right,
            (w - 1) + (r - k),
            np.where(bottom, (w - 1) + (h - 1) + (W - 1 - k - c), 2 * (w - 1) + (h - 1) + (H - 1 - k - r)),
        ),
    )
    return (start + pos).astype(np.int64)


class SpiralScanPath(ScanPath):
    def __init__(self) -> None:
        super().__init__()
        self.name = "spiral"
        self.ndim = 2
        self.continuous = True
        self.description = "clockwise spiral from the top-left corner inward"

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        rank = spiral_rank(H, W).ravel()  # [L] step of each raster cell
        order = np.empty_like(rank)
        order[rank] = np.arange(rank.size)  # invert the rank map into the order
        return order


def scanpaths() -> list[ScanPath]:
    return [SpiralScanPath()]
