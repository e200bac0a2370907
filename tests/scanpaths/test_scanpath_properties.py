"""Property tests over EVERY registered scan path (plugins included): bijective, inverse correct,
segments divide L, continuous inside segments where declared, bad shapes rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zigscan.scanpaths import FunctionScanPath, check_scanpath, get_scanpath, list_scanpaths

ALL = list_scanpaths()
FAST = settings(deadline=None, max_examples=25, derandomize=True)


def shapes(ndim: int):
    if ndim == 2:
        return st.tuples(st.integers(1, 64), st.integers(1, 64))
    return st.tuples(st.integers(1, 8), st.integers(1, 64), st.integers(1, 64))


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=st.data())
def test_standard_checks_on_random_shapes(name, data):
    path = get_scanpath(name)
    shape = data.draw(shapes(path.ndim), label="shape")
    check_scanpath(path, shapes=[shape])


@pytest.mark.parametrize("name", ALL)
def test_standard_checks_on_default_shapes(name):
    check_scanpath(name)  # edge cases: lines, 1 x 1, odd/even sides; and bad shapes raise ValueError


@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    path = get_scanpath(name)
    assert path.name == name
    assert path.ndim in (2, 3)
    assert isinstance(path.continuous, bool)
    assert path.description and "\n" not in path.description


@pytest.mark.parametrize("name", ALL)
def test_order_is_cached_per_device(name):
    path = get_scanpath(name)
    shape = (3, 4) if path.ndim == 2 else (2, 3, 4)
    assert path.order(shape) is path.order(shape, device="cpu")


def test_builtins_cover_the_public_contract():
    required = (
        ["sweep", "hilbert", "random", "video-zigzag", "temporal", "temporal-reverse"]
        + [f"zigzag-s{k}" for k in range(8)]
        + [f"hilbert-s{k}" for k in range(8)]
        + [f"spatial-zigzag-s{k}" for k in range(8)]
    )
    assert set(required) <= set(ALL)
    assert len(set(ALL) - set(required)) >= 2  # at least two more families (spiral, zorder, diagonal)


def test_checks_catch_a_false_continuity_claim():
    liar = FunctionScanPath("liar", lambda s: np.arange(s[0] * s[1]), continuous=True, description="raster")
    with pytest.raises(AssertionError, match=r"'liar' on shape \(2, 2\): continuity failed: .*step 1 -> 2"):
        check_scanpath(liar, shapes=[(2, 2)])


def test_checks_catch_a_non_permutation():
    bad = FunctionScanPath("dup", lambda s: np.zeros(s[0] * s[1], dtype=int), description="dup")
    with pytest.raises(AssertionError, match=r"'dup' on shape \(3, 3\): build failed"):
        check_scanpath(bad, shapes=[(3, 3)])


def test_checks_catch_bad_segments():
    seg = FunctionScanPath("seg", lambda s: np.arange(s[0] * s[1]), segments=lambda s: 4, description="seg")
    with pytest.raises(AssertionError, match=r"'seg' on shape \(3, 3\): segments failed"):
        check_scanpath(seg, shapes=[(3, 3)])


def test_checks_catch_nondeterminism():
    rng = np.random.default_rng(0)
    flaky = FunctionScanPath("flaky", lambda s: rng.permutation(s[0] * s[1]), description="flaky")
    with pytest.raises(AssertionError, match="determinism failed"):
        check_scanpath(flaky, shapes=[(5, 5)])


@pytest.mark.parametrize("name", ["zigzag-s0", "hilbert", "sweep"])
def test_2d_path_rejects_video_shape_with_a_hint(name):
    with pytest.raises(ValueError, match=r"expects a 2D shape \(H, W\), got \(2, 3, 4\).*video path"):
        get_scanpath(name).order((2, 3, 4))


@pytest.mark.parametrize("name", ["video-zigzag", "temporal", "spatial-zigzag-s3"])
def test_video_path_rejects_2d_shape_with_a_hint(name):
    with pytest.raises(ValueError, match=r"expects a 3D shape \(T, H, W\).*give \(T, H, W\)"):
        get_scanpath(name).order((3, 4))


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match=r"unknown scan path 'zigzag-s8'.*Did you mean: zigzag-s"):
        get_scanpath("zigzag-s8")
    with pytest.raises(KeyError, match=r"Did you mean: .*hilbert"):
        get_scanpath("hilbrt")
    with pytest.raises(ValueError, match="takes no @argument"):
        get_scanpath("sweep@3")
