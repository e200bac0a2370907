"""Small helpers shared by the order families: grid coordinates -> raster indices, and the eight
symmetries of a rectangle (start corner x row/column-major) used by ``zigzag-sK`` and ``hilbert-sK``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["CORNERS", "Coords", "raster", "symmetry"]

Coords = tuple[np.ndarray, np.ndarray]  # (rows [L], cols [L]) in visiting order

# sK: corner = K // 2 (TL, TR, BL, BR), transposed (column-major) = K % 2; paper Fig. 3c.
CORNERS = ("TL", "TR", "BL", "BR")


def raster(r: np.ndarray, c: np.ndarray, W: int) -> np.ndarray:
    """Raster index ``r*W + c`` of 2D coordinates, as int64 [L]."""
    return r.astype(np.int64) * W + c.astype(np.int64)


def symmetry(base: Callable[[int, int], Coords], H: int, W: int, k: int) -> Coords:
    """Apply symmetry ``k`` (0..7) to a path family.

    ``base(H, W)`` returns the family's path on an (H, W) grid that starts at the top-left corner and
    is "row-major" (for a snake: it runs along the first row first). Symmetry ``k`` starts at corner
    ``CORNERS[k // 2]``; odd ``k`` is the column-major twin (the base path of the transposed grid
    (W, H), transposed back), so ``zigzag-s1`` is the column-snake from TL.
    """
    if not 0 <= k < 8:
        raise ValueError(f"symmetry index must be in 0..7, got {k}")
    if k % 2:
        c, r = base(W, H)  # path on the transposed grid, coordinates swapped back
    else:
        r, c = base(H, W)
    corner = CORNERS[k // 2]
    if corner in ("TR", "BR"):
        c = W - 1 - c
    if corner in ("BL", "BR"):
        r = H - 1 - r
    return r, c
