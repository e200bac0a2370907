"""Plots: one panel per 2D path, one panel per frame for video, segments drawn as separate lines."""

from __future__ import annotations

import matplotlib
import pytest

from zigscan.scanpaths.plot import plot_gallery, plot_path


def _lines(ax) -> int:
    return sum(len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments"))


def test_2d_path_draws_one_line_per_step_and_marks_start_and_end():
    fig = plot_path("zigzag-s0", (3, 4))
    (ax,) = fig.axes
    assert _lines(ax) == 3 * 4 - 1
    assert {line.get_label() for line in ax.lines} >= {"start", "end"}
    matplotlib.pyplot.close(fig)


def test_video_path_frames_side_by_side_and_no_line_across_segments():
    fig = plot_path("spatial-zigzag-s1", (3, 2, 2))
    assert len(fig.axes) == 3
    assert [_lines(ax) for ax in fig.axes] == [3, 3, 3]  # each frame: a 2x2 snake
    matplotlib.pyplot.close(fig)
    fig = plot_path("temporal", (3, 2, 2))  # every step crosses frames: points only
    assert [_lines(ax) for ax in fig.axes] == [0, 0, 0]
    matplotlib.pyplot.close(fig)


def test_gallery_errors():
    with pytest.raises(ValueError, match="no scan paths"):
        plot_gallery([], (4, 4))
    with pytest.raises(ValueError, match="none of the paths is 3D"):
        plot_gallery(["sweep"], (2, 4, 4))
