"""The eight zigzag paths, written by hand from ZigMa Fig. 3c (grids show the step of each cell)."""

from __future__ import annotations

import numpy as np
import pytest

from zigscan.scanpaths import get_scanpath

# 3 x 3: s0 row-snake TL, s1 column-snake TL, s2 row TR, s3 column TR, s4 row BL, s5 column BL,
# s6 row BR, s7 column BR.
STEPS_3x3 = {
    0: [[0, 1, 2], [5, 4, 3], [6, 7, 8]],
    1: [[0, 5, 6], [1, 4, 7], [2, 3, 8]],
    2: [[2, 1, 0], [3, 4, 5], [8, 7, 6]],
    3: [[6, 5, 0], [7, 4, 1], [8, 3, 2]],
    4: [[6, 7, 8], [5, 4, 3], [0, 1, 2]],
    5: [[2, 3, 8], [1, 4, 7], [0, 5, 6]],
    6: [[8, 7, 6], [3, 4, 5], [2, 1, 0]],
    7: [[8, 3, 2], [7, 4, 1], [6, 5, 0]],
}

# 3 x 4 (H=3 rows, W=4 columns)
STEPS_3x4 = {
    0: [[0, 1, 2, 3], [7, 6, 5, 4], [8, 9, 10, 11]],
    1: [[0, 5, 6, 11], [1, 4, 7, 10], [2, 3, 8, 9]],
    2: [[3, 2, 1, 0], [4, 5, 6, 7], [11, 10, 9, 8]],
    3: [[11, 6, 5, 0], [10, 7, 4, 1], [9, 8, 3, 2]],
    4: [[8, 9, 10, 11], [7, 6, 5, 4], [0, 1, 2, 3]],
    5: [[2, 3, 8, 9], [1, 4, 7, 10], [0, 5, 6, 11]],
    6: [[11, 10, 9, 8], [4, 5, 6, 7], [3, 2, 1, 0]],
    7: [[9, 8, 3, 2], [10, 7, 4, 1], [11, 6, 5, 0]],
}


@pytest.mark.parametrize("k", range(8))
@pytest.mark.parametrize("shape, table", [((3, 3), STEPS_3x3), ((3, 4), STEPS_3x4)])
def test_zigzag_by_hand(k, shape, table):
    path = get_scanpath(f"zigzag-s{k}")
    steps = np.array(table[k])
    assert path.inverse(shape).reshape(shape).tolist() == steps.tolist()
    # and the order is the argsort of the step table (visiting order)
    assert path.order(shape).tolist() == np.argsort(steps.ravel()).tolist()


def _official_zigzag_path(N: int) -> list[np.ndarray]:
    """Reference twin: ``zigzag_path`` of the official code (CompVis/zigma, utils/utils_zigzag.py),
    square grids only, restated compactly."""
    paths = []
    for sr, sc, dr, dc in [(0, 0, 1, 1), (0, N - 1, 1, -1), (N - 1, 0, -1, 1), (N - 1, N - 1, -1, -1)]:
        lr = [
            (sr + dr * i) * N + sc + dc * (j if i % 2 == 0 else N - 1 - j) for i in range(N) for j in range(N)
        ]
        tb = [
            (sr + dr * (i if j % 2 == 0 else N - 1 - i)) * N + sc + dc * j for j in range(N) for i in range(N)
        ]
        paths += [np.array(lr), np.array(tb)]
    return paths


@pytest.mark.parametrize("N", [1, 2, 5, 8, 16])
def test_matches_official_zigzag_on_squares(N):
    for k, ref in enumerate(_official_zigzag_path(N)):
        assert get_scanpath(f"zigzag-s{k}").order((N, N)).tolist() == ref.tolist(), k


@pytest.mark.parametrize("k", range(8))
def test_start_corner_and_first_move(k):
    H, W = 5, 7
    order = get_scanpath(f"zigzag-s{k}").order((H, W))
    r, c = divmod(int(order[0]), W)
    corner = ["TL", "TR", "BL", "BR"][k // 2]
    assert (r, c) == {"TL": (0, 0), "TR": (0, W - 1), "BL": (H - 1, 0), "BR": (H - 1, W - 1)}[corner]
    r1, c1 = divmod(int(order[1]), W)
    assert (r1 == r) == (k % 2 == 0)  # row-snakes move along the row first, column-snakes down/up


def test_the_eight_zigzags_are_distinct():
    orders = {tuple(get_scanpath(f"zigzag-s{k}").order((4, 5)).tolist()) for k in range(8)}
    assert len(orders) == 8
