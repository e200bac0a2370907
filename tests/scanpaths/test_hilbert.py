"""The generalized Hilbert curve: continuous on even-sided rectangles and power-of-two squares, at
most diagonal steps elsewhere, equal to the classic Hilbert curve on power-of-two squares, and built
as an ORDER (the rank map is the inverse curve, which is not continuous)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zigscan.scanpaths import check_scanpath, get_scanpath
from zigscan.scanpaths.testing import step_is_neighbour

HILBERTS = ["hilbert"] + [f"hilbert-s{k}" for k in range(8)]


def _steps(order: np.ndarray, W: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.divmod(order, W)
    return np.abs(np.diff(r)), np.abs(np.diff(c))


@pytest.mark.parametrize("name", HILBERTS)
def test_continuous_on_every_even_sided_rectangle_up_to_32(name):
    path = get_scanpath(name)
    for H in range(2, 33, 2):
        for W in range(2, 33, 2):
            order = path.order((H, W)).numpy()
            assert step_is_neighbour(order, (H, W)).all(), (name, H, W)


@settings(deadline=None, max_examples=30, derandomize=True)
@given(h=st.integers(1, 64), w=st.integers(1, 64), k=st.integers(0, 7))
def test_continuous_on_random_even_sided_rectangles(h, w, k):
    shape = (2 * h, 2 * w)
    check_scanpath(_as_continuous(f"hilbert-s{k}"), shapes=[shape])


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_continuous_on_power_of_two_squares(n):
    for name in HILBERTS:
        order = get_scanpath(name).order((n, n)).numpy()
        assert step_is_neighbour(order, (n, n)).all() or n == 1, (name, n)


def test_at_most_diagonal_steps_on_every_shape_up_to_40():
    path = get_scanpath("hilbert")
    for H in range(1, 41):
        for W in range(1, 41):
            dr, dc = _steps(path.order((H, W)).numpy(), W)
            assert (np.maximum(dr, dc) <= 1).all(), (H, W)
            if max(H, W) % 2 == 0 or (H % 2 and W % 2):  # documented: continuous on these shapes
                assert ((dr + dc) == 1).all(), (H, W)


def test_odd_shapes_really_are_not_all_continuous():
    # the family declares continuous=False because some shapes need a diagonal step
    assert get_scanpath("hilbert").continuous is False
    dr, dc = _steps(get_scanpath("hilbert").order((4, 5)).numpy(), 5)
    assert ((dr + dc) == 2).any()


def _classic_hilbert_d2xy(n: int) -> np.ndarray:
    """Reference twin: the textbook Hilbert d -> (x, y) (Wikipedia), one cell at a time."""
    pts = []
    for d in range(n * n):
        x = y = 0
        t, s = d, 1
        while s < n:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y = x + s * rx, y + s * ry
            t //= 4
            s *= 2
        pts.append((x, y))
    return np.array(pts)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_equals_classic_hilbert_up_to_symmetry_on_power_of_two_squares(n):
    xy = _classic_hilbert_d2xy(n)
    classic = set()
    for a, b in [(xy[:, 0], xy[:, 1]), (xy[:, 1], xy[:, 0])]:  # the 8 symmetries, both directions
        for fa in (False, True):
            for fb in (False, True):
                r = n - 1 - a if fa else a
                c = n - 1 - b if fb else b
                o = r * n + c
                classic |= {tuple(o.tolist()), tuple(o[::-1].tolist())}
    got = {tuple(get_scanpath(f"hilbert-s{k}").order((n, n)).tolist()) for k in range(8)}
    assert len(got) == 8 and got <= classic


def test_order_not_rank_map():
    path = get_scanpath("hilbert")
    order, rank = path.order((8, 8)).numpy(), path.inverse((8, 8)).numpy()
    assert step_is_neighbour(order, (8, 8)).all()
    assert not step_is_neighbour(rank, (8, 8)).all()  # the official code's defect: rank used as order


def test_hilbert_is_s0_and_starts_top_left():
    assert (
        get_scanpath("hilbert").order((6, 10)).tolist() == get_scanpath("hilbert-s0").order((6, 10)).tolist()
    )
    assert int(get_scanpath("hilbert").order((6, 10))[0]) == 0


def _as_continuous(name: str):
    """The same path with continuous=True, so check_scanpath tests continuity on chosen shapes."""
    from zigscan.scanpaths import FunctionScanPath

    base = get_scanpath(name)
    return FunctionScanPath(name, lambda s: base.order(s), continuous=True, description=base.description)
