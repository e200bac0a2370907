"""``ScanPath``: a named rule that turns a grid shape into a permutation of its raster-order tokens.

Tokens are stored in raster order: 2D index ``r*W + c``, 3D index ``t*H*W + r*W + c``.
``order(shape)[k]`` is the raster index visited at step ``k``; ``inverse(shape)[order[k]] == k``.

Subclasses implement ``_build(shape) -> LongTensor [L]`` (vectorized; no Python loop per token) and,
when the path is factorized, ``segments(shape)``. Orders are built once per (shape, device) and cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

__all__ = ["ScanPath", "FunctionScanPath", "Shape", "check_shape"]

Shape = tuple[int, ...]


def check_shape(shape: Sequence[int], ndim: int, name: str = "scan path") -> Shape:
    """Validate a grid shape: ``ndim`` positive ints. Returns it as a tuple of ints."""
    what = "(H, W)" if ndim == 2 else "(T, H, W)"
    try:
        shape_t = tuple(int(s) for s in shape)
        if any(int(s) != s for s in shape):
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{name}: shape must be a tuple of ints {what}, got {shape!r}") from None
    if len(shape_t) != ndim:
        hint = ""
        if ndim == 2 and len(shape_t) == 3:
            hint = " This path is 2D-only: use a video path (video-zigzag, spatial-zigzag-s0, temporal, ...)."
        elif ndim == 3 and len(shape_t) == 2:
            hint = " This path is for video: give (T, H, W), or use a 2D path for images."
        raise ValueError(f"{name}: expects a {ndim}D shape {what}, got {shape_t}.{hint}")
    if any(s <= 0 for s in shape_t):
        raise ValueError(f"{name}: every side must be positive, got {shape_t}")
    return shape_t


class ScanPath:
    """A scan order over a 2D (H, W) or 3D (T, H, W) grid of tokens.

    Attributes:
        name: registry name, e.g. ``"zigzag-s3"``.
        ndim: 2 for images, 3 for video.
        continuous: every step inside a segment moves to a 4-neighbour (6-neighbour in 3D).
        description: one line for ``zigscan scans list``.
    """

    name: str = "?"
    ndim: Literal[2, 3] = 2
    continuous: bool = False
    description: str = ""

    def __init__(self) -> None:
        self._cache: dict[tuple[Shape, str, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ to implement
    def _build(self, shape: Shape) -> torch.Tensor | np.ndarray:
        """Return the order for a validated ``shape`` as integers [L] (CPU)."""
        raise NotImplementedError

    def segments(self, shape: Sequence[int]) -> int:
        """Number of independent, equal, contiguous sub-sequences of the order (1 unless factorized)."""
        check_shape(shape, self.ndim, self.name)
        return 1

    # ------------------------------------------------------------------ public API
    def order(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [L]: ``order[k]`` = raster index visited at step ``k``. Cached per (shape, device)."""
        return self._cached("order", shape, device)

    def inverse(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [L]: ``inverse[order[k]] == k`` (the step at which each raster token is visited)."""
        return self._cached("inverse", shape, device)

    def variant(self, arg: str) -> ScanPath:
        """The path named ``f"{name}@{arg}"`` (e.g. ``random@7``, another seed). Families with a
        parameter override this; ``get_scanpath`` resolves ``NAME@ARG`` through it."""
        raise ValueError(f"scan path {self.name!r} takes no @argument (got {self.name}@{arg})")

    def numel(self, shape: Sequence[int]) -> int:
        return int(np.prod(check_shape(shape, self.ndim, self.name)))

    def __repr__(self) -> str:
        kind = "continuous" if self.continuous else "not continuous"
        return f"<ScanPath {self.name!r} {self.ndim}D {kind}>"

    # ------------------------------------------------------------------ internals
    def _cached(self, what: str, shape: Sequence[int], device: torch.device | str | None) -> torch.Tensor:
        shape_t = check_shape(shape, self.ndim, self.name)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (shape_t, what, str(dev))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            cpu_key = (shape_t, what, "cpu")
            if cpu_key not in self._cache:
                order = self._checked_build(shape_t)  # np.int64 [L]
                inv = np.empty_like(order)
                inv[order] = np.arange(order.size)
                self._cache[(shape_t, "order", "cpu")] = torch.from_numpy(order)
                self._cache[(shape_t, "inverse", "cpu")] = torch.from_numpy(inv)
            out = self._cache[cpu_key]
            if dev.type != "cpu":
                out = out.to(dev)
                self._cache[key] = out
            return out

    def _checked_build(self, shape: Shape) -> np.ndarray:
        """Build and validate (numpy: torch's parallel ops stall on small busy CPUs)."""
        raw = self._build(shape)
        raw = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw
        order = np.ascontiguousarray(np.asarray(raw).reshape(-1), dtype=np.int64)
        n = int(np.prod(shape))
        if order.size != n:
            raise RuntimeError(
                f"scan path {self.name!r} built {order.size} indices for shape {shape} (expected {n})"
            )
        if n and (order.min() < 0 or order.max() >= n):
            raise RuntimeError(f"scan path {self.name!r} built indices out of range [0, {n}) for shape {shape}")
        if np.bincount(order, minlength=n).max(initial=0) > 1:
            raise RuntimeError(f"scan path {self.name!r} is not a permutation for shape {shape}")
        return order


class FunctionScanPath(ScanPath):
    """A scan path from a plain function ``fn(shape) -> int array [L]`` (handy for plugins).

    Example::

        def diagonal(shape):
            H, W = shape
            r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
            return np.lexsort((r.ravel(), (r + c).ravel()))

        path = FunctionScanPath("diagonal", diagonal, continuous=False)
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[Shape], torch.Tensor | np.ndarray],
        *,
        ndim: Literal[2, 3] = 2,
        continuous: bool = False,
        description: str = "",
        segments: Callable[[Shape], int] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.ndim = ndim
        self.continuous = continuous
        self.description = description or (fn.__doc__ or "").strip().split("\n")[0]
        self._fn = fn
        self._segments = segments

    def _build(self, shape: Shape) -> torch.Tensor | np.ndarray:
        return self._fn(shape)

    def segments(self, shape: Sequence[int]) -> int:
        shape_t = check_shape(shape, self.ndim, self.name)
        return 1 if self._segments is None else int(self._segments(shape_t))
