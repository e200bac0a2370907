"""``zigscan scans ...`` through a tiny argparse host (the main CLI only calls ``add_parser``)."""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

from zigscan.scanpaths import get_scanpath, list_scanpaths, list_schedules
from zigscan.scanpaths.cli import add_parser, parse_grid


def run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="zigscan")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(capsys):
    rc, out, _ = run(capsys, "scans", "list")
    assert rc == 0
    for name in list_scanpaths():
        assert f"\n{name} " in out
    rc, out, _ = run(capsys, "scans", "list", "temporal*")
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 3 and lines[1].split()[:4] == ["temporal", "3D", "yes", "zigscan"]
    rc, _, err = run(capsys, "scans", "list", "nothing*")
    assert rc == 2 and "no scan path matches" in err


def test_show_ascii_prints_the_step_of_each_cell(capsys):
    rc, out, _ = run(capsys, "scans", "show", "zigzag-s3", "--grid", "3x4")
    assert rc == 0
    assert out.splitlines()[1:] == ["11  6  5  0", "10  7  4  1", " 9  8  3  2"]
    rc, out, _ = run(capsys, "scans", "show", "temporal-reverse", "--grid", "2x1x2")
    assert rc == 0 and out.splitlines()[1:] == ["t=0:", "1 3", "t=1:", "0 2"]


def test_show_png(capsys, tmp_path):
    for name, grid in [("hilbert", "6x10"), ("video-zigzag", "3x4x4")]:
        out_file = tmp_path / f"{name}.png"
        rc, out, _ = run(capsys, "scans", "show", name, "--grid", grid, "--out", str(out_file))
        assert rc == 0 and "wrote" in out
        with Image.open(out_file) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with Image.open(tmp_path / "video-zigzag.png") as v, Image.open(tmp_path / "hilbert.png") as h:
        assert v.size[0] > h.size[0]  # frames side by side


def test_show_errors_return_2_without_traceback(capsys):
    rc, out, err = run(capsys, "scans", "show", "zigzag", "--grid", "4x4")
    assert rc == 2 and "unknown scan path 'zigzag'" in err and "zigzag-s" in err and "Traceback" not in err
    rc, _, err = run(capsys, "scans", "show", "zigzag-s0", "--grid", "2x4x4")
    assert rc == 2 and "expects a 2D shape" in err
    rc, _, err = run(capsys, "scans", "show", "sweep", "--grid", "64x64")
    assert rc == 2 and "--out" in err


@pytest.mark.parametrize("bad", ["4", "4x", "axb", "0x4", "2x3x4x5", "-1x3"])
def test_bad_grid_is_a_clear_usage_error(capsys, bad):
    with pytest.raises(SystemExit) as exc:
        run(capsys, "scans", "show", "sweep", f"--grid={bad}")
    assert exc.value.code == 2
    assert "expected HxW for images" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError):
        parse_grid(bad)


def test_parse_grid():
    assert parse_grid("16x12") == (16, 12) and parse_grid("4X8x8") == (4, 8, 8)


def test_gallery_writes_one_png_per_path_and_an_overview(capsys, tmp_path):
    rc, out, _ = run(capsys, "scans", "gallery", "zigzag-s[0-2]", "--grid", "4x5", "--out", str(tmp_path))
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gallery-4x5.png",
        "zigzag-s0.png",
        "zigzag-s1.png",
        "zigzag-s2.png",
    ]
    rc, _, _ = run(capsys, "scans", "gallery", "temporal*", "--grid", "2x3x3", "--out", str(tmp_path / "v"))
    assert rc == 0 and len(list((tmp_path / "v").glob("*.png"))) == 3


def test_stats_table(capsys):
    rc, out, _ = run(capsys, "scans", "stats", "--grid", "8x8", "zigzag-s0")
    lines = out.strip().splitlines()
    assert rc == 0 and lines[0].split() == [
        "path",
        "grid",
        "segments",
        "mean",
        "dist",
        "max",
        "dist",
        "continuity",
    ]
    assert lines[2].split() == ["zigzag-s0", "8x8", "1", "4.50", "15", "1.000"]
    rc, out, _ = run(capsys, "scans", "stats", "--grid", "2x4x4")
    assert rc == 0 and "temporal" in out and "\nzigzag-s0 " not in out and "\nsweep " not in out
    rc, _, err = run(capsys, "scans", "stats", "--grid", "4x4", "temporal")
    assert rc == 2 and "TxHxW" in err


def test_schedules(capsys):
    rc, out, _ = run(capsys, "scans", "schedules")
    assert rc == 0
    for name in list_schedules():
        assert f"\n{name} " in out
    rc, out, _ = run(capsys, "scans", "schedules", "zigzag-2", "--depth", "3")
    assert out.splitlines()[1].split() == ["zigzag-2", "zigzag-s0,", "zigzag-s1,", "zigzag-s0"]


def test_help_everywhere(capsys):
    for cmd in ["list", "show", "gallery", "stats", "schedules"]:
        with pytest.raises(SystemExit) as exc:
            run(capsys, "scans", cmd, "--help")
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out
    assert get_scanpath("sweep") is not None
