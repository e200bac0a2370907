"""Checks for scan-path and schedule authors (the property tests of zigscan use these same functions).

    from zigscan.scanpaths.testing import check_scanpath
    check_scanpath(my_path)                  # default shapes; raises AssertionError naming the failure
    check_scanpath(my_path, shapes=[(5, 7)])

Checked for a path on each shape: the order is a LongTensor [L] holding a permutation of range(L);
``inverse[order[k]] == k``; ``segments`` divides L; when declared ``continuous``, every step inside a
segment moves to a 4-neighbour (6-neighbour in 3D); building twice gives the same order; shapes of the
wrong dimension or with a non-positive side raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .base import ScanPath
from .registry import get_scanpath

__all__ = ["check_scanpath", "check_schedule", "default_shapes", "step_is_neighbour"]


def default_shapes(ndim: int, n_random: int = 8, seed: int = 0) -> list[tuple[int, ...]]:
    """Edge cases (lines, 1 x 1, odd and even sides) plus ``n_random`` random shapes."""
    rng = np.random.default_rng(seed)
    if ndim == 2:
        fixed = [(1, 1), (1, 7), (6, 1), (2, 2), (3, 3), (3, 5), (4, 6), (8, 8), (5, 16), (17, 12)]
        rand = [tuple(int(v) for v in rng.integers(1, 40, size=2)) for _ in range(n_random)]
    else:
        fixed = [(1, 1, 1), (1, 3, 4), (3, 1, 1), (2, 2, 2), (2, 5, 3), (4, 4, 6), (5, 3, 3)]
        rand = [
            (int(rng.integers(1, 9)), int(rng.integers(1, 17)), int(rng.integers(1, 17)))
            for _ in range(n_random)
        ]
    return fixed + rand


def step_is_neighbour(order: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """[L-1] bool: step k -> k+1 moves to a grid neighbour (Manhattan distance 1)."""
    coords = np.stack(np.unravel_index(order, tuple(shape)))  # [ndim, L]
    return np.abs(np.diff(coords, axis=1)).sum(0) == 1


def _fail(path: ScanPath, shape, step: str, detail: str) -> AssertionError:
    return AssertionError(f"scan path {path.name!r} on shape {tuple(shape)}: {step} failed: {detail}")


def _check_one(path: ScanPath, shape: tuple[int, ...]) -> None:
    L = int(np.prod(shape))
    try:
        order_t = path.order(shape)
    except Exception as exc:  # the base class rejects non-permutations while building
        raise _fail(path, shape, "build", f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(order_t, torch.Tensor) or order_t.dtype != torch.long or order_t.shape != (L,):
        raise _fail(path, shape, "order type", f"expected LongTensor [{L}], got {order_t!r:.80}")
    order = order_t.numpy()
    if not np.array_equal(np.sort(order), np.arange(L)):
        missing = np.setdiff1d(np.arange(L), order)[:5]
        raise _fail(
            path, shape, "bijective", f"not a permutation of range({L}); missing e.g. {missing.tolist()}"
        )
    inv = path.inverse(shape).numpy()
    if not np.array_equal(inv[order], np.arange(L)):
        k = int(np.flatnonzero(inv[order] != np.arange(L))[0])
        raise _fail(path, shape, "inverse", f"inverse[order[{k}]] = {inv[order[k]]}, expected {k}")
    S = path.segments(shape)
    if not isinstance(S, (int, np.integer)) or S < 1 or L % S:
        raise _fail(path, shape, "segments", f"segments = {S!r} must be a positive divisor of L = {L}")
    if path.continuous and L > 1:
        ok = step_is_neighbour(order, shape)
        inside = (np.arange(1, L) % (L // S)) != 0  # steps that stay inside one segment
        bad = np.flatnonzero(inside & ~ok)
        if bad.size:
            k = int(bad[0])
            a = np.unravel_index(order[k], shape)
            b = np.unravel_index(order[k + 1], shape)
            raise _fail(
                path,
                shape,
                "continuity",
                f"declared continuous, but step {k} -> {k + 1} jumps from {tuple(map(int, a))} to "
                f"{tuple(map(int, b))} ({bad.size} such steps)",
            )
    if isinstance(getattr(path, "_cache", None), dict):
        path._cache.clear()  # rebuild: must be deterministic
    again = path.order(shape).numpy()
    if not np.array_equal(again, order):
        raise _fail(path, shape, "determinism", "a second build gave a different order")


def _check_bad_shapes(path: ScanPath) -> None:
    wrong = [(4, 4, 4)] if path.ndim == 2 else [(4, 4)]
    for shape in [*wrong, (0,) * path.ndim, (-1,) + (3,) * (path.ndim - 1)]:
        try:
            path.order(shape)
        except ValueError:
            continue
        raise _fail(path, shape, "shape validation", "expected ValueError for this shape, got an order")


def check_scanpath(path: ScanPath | str, shapes: Iterable[Sequence[int]] | None = None) -> None:
    """Run the standard checks on ``path`` (a ScanPath or a registered name) for every shape (default:
    ``default_shapes(path.ndim)``). Raises AssertionError naming the path, the shape and the step."""
    path = get_scanpath(path) if isinstance(path, str) else path
    if not isinstance(path, ScanPath):
        raise AssertionError(f"{path!r} is not a zigscan.scanpaths.ScanPath")
    if path.ndim not in (2, 3):
        raise AssertionError(f"scan path {path.name!r}: ndim must be 2 or 3, got {path.ndim!r}")
    for shape in default_shapes(path.ndim) if shapes is None else shapes:
        _check_one(path, tuple(int(s) for s in shape))
    _check_bad_shapes(path)


def check_schedule(schedule, depths: Iterable[int] = (1, 2, 3, 7, 8, 12, 28)) -> None:
    """Check a Schedule (or a registered schedule name): for each depth, ``names(depth)`` has ``depth``
    entries, every name resolves to a scan path of the schedule's ``ndim``, and list schedules follow
    Omega_i = S_(i mod K). Raises AssertionError with the schedule, depth and layer."""
    from .schedules import SCHEDULES, Schedule

    if isinstance(schedule, str):
        schedule = SCHEDULES.get(schedule)
    if not isinstance(schedule, Schedule):
        raise AssertionError(f"{schedule!r} is not a zigscan.scanpaths.Schedule")
    for depth in depths:
        names = schedule.names(depth)
        if len(names) != depth:
            raise AssertionError(f"schedule {schedule.name!r}, depth {depth}: got {len(names)} names")
        for i, n in enumerate(names):
            try:
                p = get_scanpath(n)
            except KeyError as exc:
                raise AssertionError(f"schedule {schedule.name!r}, depth {depth}, layer {i}: {exc}") from None
            if p.ndim != schedule.ndim:
                raise AssertionError(
                    f"schedule {schedule.name!r}, depth {depth}, layer {i}: path {n!r} is {p.ndim}D, "
                    f"schedule declares ndim={schedule.ndim}"
                )
            if not callable(schedule.paths) and n != schedule.paths[i % len(schedule.paths)]:
                raise AssertionError(
                    f"schedule {schedule.name!r}, depth {depth}, layer {i}: got {n!r}, expected "
                    f"S_(i mod K) = {schedule.paths[i % len(schedule.paths)]!r}"
                )
