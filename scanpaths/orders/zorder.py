"""``zorder``: Z-order (Morton) curve for any rectangle: cells sorted by their interleaved row/column
bits (column bit lowest). Local in blocks of 2^k but jumps between them: not continuous."""

from __future__ import annotations

import numpy as np

from ..base import ScanPath, Shape

__all__ = ["ZOrderScanPath", "morton_key", "scanpaths"]


def morton_key(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Interleave the bits of ``r`` (odd positions) and ``c`` (even positions). One loop per bit."""
    r = r.astype(np.int64)
    c = c.astype(np.int64)
    bits = int(max(int(r.max(initial=0)), int(c.max(initial=0)))).bit_length()
    key = np.zeros_like(r)
    for b in range(bits):
        key |= ((c >> b) & 1) << (2 * b)
        key |= ((r >> b) & 1) << (2 * b + 1)
    return key


class ZOrderScanPath(ScanPath):
    def __init__(self) -> None:
        super().__init__()
        self.name = "zorder"
        self.ndim = 2
        self.continuous = False
        self.description = "Z-order (Morton) curve, any rectangle (cells sorted by interleaved bits)"

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        return np.argsort(morton_key(r.ravel(), c.ravel()), kind="stable")  # [L]


def scanpaths() -> list[ScanPath]:
    return [ZOrderScanPath()]
