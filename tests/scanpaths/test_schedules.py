"""Schedules: Omega_i = S_(i mod K), the paper's rows, video-sst, lists from configs, errors."""

from __future__ import annotations

import pytest

from zigscan.scanpaths import (
    SCHEDULES,
    Schedule,
    UnknownNameError,
    check_schedule,
    get_schedule,
    list_schedules,
    register_schedule,
)


def _names(sched, depth):
    return [p.name for p in get_schedule(sched, depth)]


@pytest.mark.parametrize("name", list_schedules())
def test_every_registered_schedule_passes_the_checks(name):
    check_schedule(name)


def test_builtins():
    assert {"sweep", "zigzag-1", "zigzag-2", "zigzag-8", "hilbert-8", "random-8", "video-sst"} <= set(
        list_schedules()
    )
    assert list_schedules("zigzag-*") == ["zigzag-1", "zigzag-2", "zigzag-8"]


def test_paper_rows_follow_official_zigzagN():
    # official: zz_paths = zigzag_path(N)[:k] * depth (CompVis/zigma model_zigma.py)
    assert _names("zigzag-1", 3) == ["zigzag-s0"] * 3
    assert _names("zigzag-2", 5) == ["zigzag-s0", "zigzag-s1", "zigzag-s0", "zigzag-s1", "zigzag-s0"]
    assert _names("zigzag-8", 10) == [f"zigzag-s{i % 8}" for i in range(10)]
    assert _names("sweep", 2) == ["sweep", "sweep"]
    assert _names("hilbert-8", 9)[8] == "hilbert-s0"


def test_random_8_has_eight_distinct_orders():
    paths = get_schedule("random-8", 8)
    orders = {tuple(p.order((6, 6)).tolist()) for p in paths}
    assert len(orders) == 8
    assert len({p.seed for p in paths}) == 8


def test_video_sst():
    names = _names("video-sst", 9)
    assert names == [
        "spatial-zigzag-s0",
        "spatial-zigzag-s1",
        "temporal",
        "spatial-zigzag-s2",
        "spatial-zigzag-s3",
        "temporal-reverse",
        "spatial-zigzag-s4",
        "spatial-zigzag-s5",
        "temporal",
    ]
    assert _names("video-sst", 14)[12:] == ["spatial-zigzag-s0", "spatial-zigzag-s1"]  # spatial cycles s0..s7
    assert SCHEDULES.get("video-sst").ndim == 3


def test_list_of_path_names_as_in_a_config():
    assert _names(["sweep", "hilbert"], 3) == ["sweep", "hilbert", "sweep"]
    assert _names(("random@5",), 1) == ["random@5"]


def test_unknown_names_give_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown schedule 'zigzag-4'.*Did you mean: zigzag-"):
        get_schedule("zigzag-4", 8)
    with pytest.raises(UnknownNameError, match=r"unknown scan path 'zigzag-s10'.*Did you mean"):
        get_schedule(["sweep", "zigzag-s10"], 4)


def test_mixing_2d_and_video_paths_is_an_error():
    with pytest.raises(ValueError, match=r"mixes 2D and video scan paths: sweep \(2D\), temporal \(3D\)"):
        get_schedule(["sweep", "temporal"], 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="depth must be a positive int"):
        get_schedule("zigzag-8", 0)
    with pytest.raises(TypeError, match="non-empty list of scan-path names"):
        Schedule("x", [])
    with pytest.raises(TypeError, match="non-empty list"):
        get_schedule([], 3)
    bad = Schedule("short", lambda depth: ["sweep"])
    with pytest.raises(ValueError, match="expected a list of 3 path names"):
        bad.names(3)


def test_register_a_custom_schedule():
    sched = Schedule("test-custom-3", ["hilbert", "zigzag-s1", "spiral"], "a test schedule")
    try:
        register_schedule(sched)
        assert "test-custom-3" in list_schedules("test-*")
        assert SCHEDULES.source("test-custom-3") == "user"
        assert _names("test-custom-3", 4) == ["hilbert", "zigzag-s1", "spiral", "hilbert"]
        check_schedule(sched)
        with pytest.raises(ValueError, match="registered twice"):
            register_schedule(sched)
    finally:
        SCHEDULES.unregister("test-custom-3")


def test_check_schedule_catches_wrong_dimension_and_unknown_paths():
    with pytest.raises(AssertionError, match=r"path 'temporal' is 3D, schedule declares ndim=2"):
        check_schedule(Schedule("bad-dim", ["temporal"]))
    with pytest.raises(AssertionError, match=r"layer 1: unknown scan path 'nope'"):
        check_schedule(Schedule("bad-name", ["sweep", "nope"]))
