"""Locality of a scan path on a grid, as numbers to compare paths by.

For every pair of grid neighbours (4-neighbours in 2D, 6-neighbours in 3D) the scan distance is
``|step(a) - step(b)|`` on the flat order (segments laid end to end): how far apart the mixer sees two
tokens that touch in the image. Continuity is the fraction of path steps (inside segments; the jumps
between independent segments are not steps) that move to a neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import ScanPath, check_shape
from .registry import get_scanpath

__all__ = ["LocalityStats", "locality", "locality_table", "format_locality_table", "neighbour_pairs"]


@dataclass(frozen=True)
class LocalityStats:
    name: str
    shape: tuple[int, ...]
    mean_distance: float  # mean |step(a) - step(b)| over neighbour pairs
    max_distance: int  # max of the same
    continuity: float  # fraction of in-segment steps that move to a neighbour
    segments: int


def neighbour_pairs(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raster indices (a [P], b [P]) of every pair of grid neighbours along each axis."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    a, b = [], []
    for axis in range(len(shape)):
        n = shape[axis]
        a.append(np.take(idx, np.arange(n - 1), axis=axis).ravel())
        b.append(np.take(idx, np.arange(1, n), axis=axis).ravel())
    return np.concatenate(a), np.concatenate(b)


def locality(path: ScanPath | str, shape: Sequence[int]) -> LocalityStats:
    """Locality numbers of one path on one grid."""
    path = get_scanpath(path) if isinstance(path, str) else path
    shape_t = check_shape(shape, path.ndim, path.name)
    order = path.order(shape_t).numpy()
    inv = path.inverse(shape_t).numpy()
    a, b = neighbour_pairs(shape_t)
    dist = np.abs(inv[a] - inv[b])  # [P]
    S = path.segments(shape_t)
    coords = np.stack(np.unravel_index(order, shape_t))  # [ndim, L] in visiting order
    step = np.abs(np.diff(coords, axis=1)).sum(0) == 1  # [L-1] neighbour move?
    inside = (np.arange(1, order.size) % (order.size // S)) != 0  # not a jump between segments
    n_steps = int(inside.sum())
    return LocalityStats(
        name=path.name,
        shape=shape_t,
        mean_distance=float(dist.mean()) if dist.size else 0.0,
        max_distance=int(dist.max()) if dist.size else 0,
        continuity=float(step[inside].mean()) if n_steps else 1.0,
        segments=S,
    )


def locality_table(names: Sequence[str | ScanPath], shape: Sequence[int]) -> list[LocalityStats]:
    """Locality of each path on ``shape`` (paths of another ndim are skipped)."""
    out = []
    for n in names:
        p = get_scanpath(n) if isinstance(n, str) else n
        if p.ndim == len(shape):
            out.append(locality(p, shape))
    return out


def format_locality_table(rows: Sequence[LocalityStats]) -> str:
    """Aligned text table, one line per path."""
    head = ("path", "grid", "segments", "mean dist", "max dist", "continuity")
    body = [
        (
            r.name,
            "x".join(map(str, r.shape)),
            str(r.segments),
            f"{r.mean_distance:.2f}",
            str(r.max_distance),
            f"{r.continuity:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = []
    for k, row in enumerate([head, *body]):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [
            c.rjust(w) for c, w in zip(row[2:], widths[2:])
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
