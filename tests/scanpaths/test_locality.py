"""Locality numbers: exact values on small grids and the expected ranking of paths."""

from __future__ import annotations

import pytest

from zigscan.scanpaths import format_locality_table, list_scanpaths, locality, locality_table
from zigscan.scanpaths.locality import neighbour_pairs


def test_neighbour_pairs_count():
    a, b = neighbour_pairs((4, 5))
    assert a.size == 4 * 4 + 3 * 5
    a, b = neighbour_pairs((2, 3, 4))
    assert a.size == 1 * 3 * 4 + 2 * 2 * 4 + 2 * 3 * 3
    assert ((b - a) == 12).sum() == 12 and ((b - a) == 1).sum() == 18  # time pairs, column pairs


def test_sweep_and_zigzag_exact_on_16x16():
    H = W = 16
    sweep, zz = locality("sweep", (H, W)), locality("zigzag-s0", (H, W))
    assert sweep.max_distance == W  # vertical neighbours are one row apart
    assert zz.max_distance == 2 * W - 1  # ... except at the turning side of the snake
    assert zz.continuity == 1.0
    assert sweep.continuity == pytest.approx(1 - (H - 1) / (H * W - 1))  # one jump per row change
    assert zz.mean_distance == pytest.approx(sweep.mean_distance)  # same mean |step| over neighbours


def test_ranking_on_16x16():
    rows = {r.name: r for r in locality_table(list_scanpaths(), (16, 16))}
    for name in ["zigzag-s0", "hilbert", "spiral", "sweep", "zorder", "diagonal"]:
        assert rows["random"].mean_distance > 4 * rows[name].mean_distance
    for name in ["hilbert", "spiral"] + [f"zigzag-s{k}" for k in range(8)]:
        assert rows[name].continuity == 1.0  # 16x16 is even-sided: hilbert continuous too
    assert rows["zorder"].continuity < 1 and rows["random"].continuity < 0.1


def test_video_and_segments():
    t = locality("temporal", (4, 3, 3))
    assert t.segments == 9 and t.continuity == 1.0
    assert locality("video-zigzag", (4, 3, 3)).continuity == 1.0
    assert [r.name for r in locality_table(["sweep", "temporal"], (4, 3, 3))] == ["temporal"]


def test_table_is_aligned():
    text = format_locality_table(locality_table(["sweep", "zigzag-s0", "hilbert-s7"], (8, 8)))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["path", "grid"] and len(lines) == 5
    assert len({len(line) for line in lines[1:]}) == 1  # all rows the same width
