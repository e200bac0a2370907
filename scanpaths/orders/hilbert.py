"""``hilbert`` and ``hilbert-s0`` ... ``hilbert-s7``: the generalized Hilbert curve ("gilbert") for ANY
rectangle, and its eight symmetries.

Algorithm: J. Cerveny's gilbert (github.com/jakubcerveny/gilbert, BSD-2), the curve the official ZigMa
code uses (utils/utils_gilbert.py, utils/utils_zigzag.py). A block of ``w`` x ``h`` cells (``w`` along
the major axis) is split into two halves along the major axis when it is long (2w > 3h), otherwise
into three sub-blocks (up, across, down); halves are rounded to even sizes where possible so the
sub-curves meet at neighbouring cells. Halving is by integer division of the side LENGTHS (the Python
reference floors signed vectors, which can put the odd cell in the other half of a mirrored block), so
the curve of a block depends only on (w, h); we build each distinct (w, h) once
(memoized, a handful per level) and place it with an affine map, instead of one Python call per cell.

Properties (checked by tests/scanpaths/test_hilbert.py on every shape in the stated ranges):

* a permutation for every H, W >= 1, starting at the top-left cell (0, 0);
* continuous (every step moves to a 4-neighbour) on every rectangle with both sides even (so on
  every power-of-two square), and more generally whenever the longer side is even or both sides are
  odd; also on all 1 x W / H x 1 lines;
* when the longer side is odd and the shorter even (e.g. 4 x 5), some steps are diagonal (to an
  8-neighbour, |dr| = |dc| = 1), never longer. Verified for every H, W in 1..64 (tests check 1..40).
  Hence ``continuous = False`` is declared for the family: 4-neighbour continuity does not hold for
  every shape. Use a grid whose longer side is even when it matters.

This module builds the ORDER (cell visited at step k). The official code stored the gilbert index of
each cell (a rank map) and used it as a gather index, which scans the inverse curve (not continuous);
DESIGN.md lists that as a defect not to repeat.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..base import ScanPath, Shape
from ._grid import CORNERS, Coords, raster, symmetry

__all__ = ["HilbertScanPath", "gilbert", "gilbert_block", "scanpaths"]


@lru_cache(maxsize=4096)
def gilbert_block(w: int, h: int) -> np.ndarray:
    """The gilbert curve of a canonical block: ``w`` cells along the major axis ``i``, ``h`` along the
    minor axis ``j``, starting at (0, 0) and ending on the far side of the major axis (i = w-1, or
    next to it). Returns int32 [2, w*h]: rows ``i`` and ``j`` in visiting order (read-only, cached)."""
    if h == 1:
        out = np.stack([np.arange(w), np.zeros(w, dtype=np.int64)])
    elif w == 1:
        out = np.stack([np.zeros(h, dtype=np.int64), np.arange(h)])
    elif 2 * w > 3 * h:  # long block: two halves side by side along the major axis
        w2 = w // 2
        if w2 % 2 and w > 2:  # prefer even steps
            w2 += 1
        a = gilbert_block(w2, h)
        b = gilbert_block(w - w2, h)
        out = np.concatenate([a, b + np.array([[w2], [0]])], axis=1)
    else:  # standard case: one step up (minor), one long way across, one step down
        w2, h2 = w // 2, h // 2
        if h2 % 2 and h > 2:  # prefer even steps
            h2 += 1
        up = gilbert_block(h2, w2)  # major along j, minor along i
        across = gilbert_block(w, h - h2)
        down = gilbert_block(h2, w - w2)  # starts at (w-1, h2-1), major -j, minor -i
        out = np.concatenate(
            [
                up[::-1],  # (i=q, j=p)
                across + np.array([[0], [h2]]),
                np.stack([w - 1 - down[1], h2 - 1 - down[0]]),
            ],
            axis=1,
        )
    out = np.ascontiguousarray(out, dtype=np.int32)
    out.flags.writeable = False
    return out


def gilbert(H: int, W: int) -> Coords:
    """Generalized Hilbert curve on an (H, W) grid from the top-left cell: (rows [L], cols [L]).

    The major axis is the longer side (columns when W >= H), as in gilbert2d(width=W, height=H)."""
    if W >= H:
        i, j = gilbert_block(W, H)  # i along columns (x), j along rows (y)
        return j.astype(np.int64), i.astype(np.int64)
    i, j = gilbert_block(H, W)  # i along rows, j along columns
    return i.astype(np.int64), j.astype(np.int64)


class HilbertScanPath(ScanPath):
    """``hilbert-sK`` (``hilbert`` = s0): gilbert with symmetry K (start corner ``CORNERS[K // 2]``;
    odd K: the curve of the transposed grid, transposed back)."""

    def __init__(self, k: int = 0, name: str | None = None) -> None:
        super().__init__()
        if not 0 <= k < 8:
            raise ValueError(f"hilbert index must be in 0..7, got {k}")
        self.k = k
        self.name = name or f"hilbert-s{k}"
        self.ndim = 2
        self.continuous = False  # continuous on even-sided rectangles only: see the module docstring
        flavour = ", transposed" if k % 2 else ""
        self.description = (
            f"generalized Hilbert (gilbert) from {CORNERS[k // 2]}{flavour}; continuous on even-sided grids"
        )

    def _build(self, shape: Shape) -> np.ndarray:
        H, W = shape
        r, c = symmetry(gilbert, H, W, self.k)
        return raster(r, c, W)  # [L]


def scanpaths() -> list[ScanPath]:
    return [HilbertScanPath(0, name="hilbert")] + [HilbertScanPath(k) for k in range(8)]
