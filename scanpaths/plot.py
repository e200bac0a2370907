"""Drawing scan paths with matplotlib (Agg backend, files only).

``plot_path`` draws one path over its grid: the line through the cells in visiting order, coloured by
step (viridis), the start as a green dot and the end as a red square; segments of factorized paths
are drawn as separate lines. Video paths are drawn frame by frame, side by side. ``plot_gallery``
puts many paths on one sheet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (files only; never open a window)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from .base import ScanPath, check_shape  # noqa: E402
from .registry import get_scanpath  # noqa: E402

__all__ = ["plot_path", "plot_gallery", "draw_path"]

MAX_FRAMES = 8  # video frames drawn side by side


def _resolve(path: ScanPath | str) -> ScanPath:
    return get_scanpath(path) if isinstance(path, str) else path


def _draw_frame(ax, rows, cols, steps, L, H, W, *, breaks, start, end, title=None) -> None:
    """Draw the visits (rows, cols, global steps) of one frame; ``breaks[i]`` = no line to i+1."""
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)  # row 0 on top, like the image
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-0.5, W, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, H, 1), minor=True)
    ax.grid(which="minor", color="0.88", linewidth=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    if rows.size > 1:
        pts = np.stack([cols, rows], axis=1).astype(float)  # (x, y)
        segs = np.stack([pts[:-1], pts[1:]], axis=1)  # [n-1, 2, 2]
        keep = ~breaks[:-1]
        lc = LineCollection(segs[keep], cmap="viridis", linewidths=1.6)
        lc.set_array(steps[:-1][keep].astype(float))
        lc.set_clim(0, max(L - 1, 1))
        ax.add_collection(lc)
    ax.scatter(
        cols, rows, c=steps, cmap="viridis", vmin=0, vmax=max(L - 1, 1), s=np.clip(300 / max(H, W), 2, 40)
    )
    if start is not None:
        ax.plot(start[1], start[0], "o", color="limegreen", markersize=9, markeredgecolor="k", label="start")
    if end is not None:
        ax.plot(end[1], end[0], "s", color="red", markersize=8, markeredgecolor="k", label="end")
    if title:
        ax.set_title(title, fontsize=8)


def draw_path(path: ScanPath | str, shape: Sequence[int], axes) -> None:
    """Draw ``path`` on ``shape`` into ``axes`` (one Axes for 2D; a sequence of Axes, one per shown
    frame, for video)."""
    path = _resolve(path)
    shape_t = check_shape(shape, path.ndim, path.name)
    order = path.order(shape_t).numpy()
    L = order.size
    seg_len = L // path.segments(shape_t)
    steps = np.arange(L)
    seg_end = (steps + 1) % seg_len == 0  # no line from the last step of a segment
    if path.ndim == 2:
        H, W = shape_t
        r, c = np.divmod(order, W)
        _draw_frame(axes, r, c, steps, L, H, W, breaks=seg_end, start=(r[0], c[0]), end=(r[-1], c[-1]))
        return
    T, H, W = shape_t
    t, rc = np.divmod(order, H * W)
    r, c = np.divmod(rc, W)
    for f, ax in enumerate(list(axes)[: min(T, MAX_FRAMES)]):
        sel = np.flatnonzero(t == f)  # steps in this frame, in visiting order
        # a line only between consecutive steps that both lie in this frame (and in one segment)
        brk = np.ones(sel.size, dtype=bool)
        if sel.size > 1:
            brk[:-1] = (np.diff(sel) != 1) | seg_end[sel[:-1]]
        _draw_frame(
            ax,
            r[sel],
            c[sel],
            steps[sel],
            L,
            H,
            W,
            breaks=brk,
            start=(r[0], c[0]) if t[0] == f else None,
            end=(r[-1], c[-1]) if t[-1] == f else None,
            title=f"t={f}",
        )


def plot_path(
    path: ScanPath | str, shape: Sequence[int], out: str | Path | None = None, *, title: str | None = None
):
    """Figure of one path on one grid; saved to ``out`` (PNG) if given. Returns the figure."""
    path = _resolve(path)
    shape_t = check_shape(shape, path.ndim, path.name)
    grid = "x".join(map(str, shape_t))
    if path.ndim == 2:
        H, W = shape_t
        fig, ax = plt.subplots(figsize=(max(2.5, 4 * W / max(H, W)), max(2.5, 4 * H / max(H, W))))
        draw_path(path, shape_t, ax)
    else:
        n = min(shape_t[0], MAX_FRAMES)
        fig, axs = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
        draw_path(path, shape_t, axs[0])
    fig.suptitle(title or f"{path.name}  ({grid})", fontsize=10)
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return fig


def plot_gallery(
    names: Sequence[ScanPath | str], shape: Sequence[int], out: str | Path | None = None, *, cols: int = 6
):
    """One sheet with every path of ``names`` on ``shape`` (2D: a grid of panels; video: one row of
    frames per path). Saved to ``out`` if given. Returns the figure."""
    paths = [_resolve(n) for n in names]
    if not paths:
        raise ValueError("plot_gallery: no scan paths to draw")
    ndim = len(shape)
    paths = [p for p in paths if p.ndim == ndim]
    if not paths:
        raise ValueError(f"plot_gallery: none of the paths is {ndim}D (grid {tuple(shape)})")
    if ndim == 2:
        rows = -(-len(paths) // cols)
        ncols = min(cols, len(paths))
        fig, axs = plt.subplots(rows, ncols, figsize=(2.6 * ncols, 2.8 * rows), squeeze=False)
        for ax, p in zip(axs.flat, paths):
            draw_path(p, shape, ax)
            ax.set_title(p.name, fontsize=9)
        for ax in list(axs.flat)[len(paths) :]:
            ax.axis("off")
    else:
        n = min(shape[0], MAX_FRAMES)
        fig, axs = plt.subplots(len(paths), n, figsize=(2.2 * n, 2.4 * len(paths)), squeeze=False)
        for row, p in zip(axs, paths):
            draw_path(p, shape, row)
            row[0].set_ylabel(p.name, fontsize=9)
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        plt.close(fig)
    return fig
