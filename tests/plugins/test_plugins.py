"""Plugins: built-ins through the hooks, the real example distribution, and every failure mode.

Failure cases use real distributions: a ``*.dist-info`` folder with an ``entry_points.txt`` on the
``PYTHONPATH`` of a fresh interpreter is exactly what ``pip install`` leaves behind, so
``importlib.metadata`` and pluggy see an installed plugin, not a mock.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from zigscan.backbones import list_mixers
from zigscan.plugins import PluginError, hookimpl, plugin_report, register_plugin, reset_plugins
from zigscan.scanpaths import SCANPATHS, FunctionScanPath, get_scanpath, list_scanpaths
from zigscan.scanpaths.schedules import get_schedule, list_schedules

EXAMPLE_DIST = "zigscan-example-plugin"
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "zigscan-example-plugin"


# ----------------------------------------------------------------------------- helpers
def make_plugin_dist(root: Path, name: str, code: str) -> None:
    """Write an installed distribution ``name`` (module ``{name}_mod``) with a zigscan entry point."""
    mod = f"{name}_mod"
    (root / f"{mod}.py").write_text(code)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[zigscan]\n{name} = {mod}\n")
    (info / "RECORD").write_text("")


def run_py(code: str, *, path: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "ZIGSCAN_DISABLE_PLUGINS"}
    full_env.update(env or {})
    if path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(path), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=120)


def run_cli(*args: str, path: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_py(f"import sys; from zigscan.diffusion.cli import main; sys.exit(main({list(args)!r}))",
                  path=path, env=env)


HEADER = """
from zigscan.plugins import hookimpl
from zigscan.scanpaths import FunctionScanPath
import numpy as np
"""


def plug(body: str) -> str:
    """Plugin source: the common imports, then ``body`` (indented in this file, dedented here)."""
    return HEADER + textwrap.dedent(body)


# ----------------------------------------------------------------------------- built-ins
def test_builtins_arrive_through_the_hooks():
    assert SCANPATHS.source("zigzag-s0") == "zigscan"
    report = {info.name: info for info in plugin_report()}
    builtin = report["zigscan"]
    assert builtin.origin == "built-in" and builtin.status == "loaded"
    assert "zigzag-s3" in builtin.registered["zigscan_register_scanpaths"]
    assert "zigzag-8" in builtin.registered["zigscan_register_schedules"]
    assert "attention" in builtin.registered["zigscan_register_mixers"]


def test_plugins_load_lazily_once():
    out = run_py("""
        import sys
        import zigscan.scanpaths as sp
        before = 'zigscan.plugins.manager' in sys.modules
        names = sp.list_scanpaths()
        import zigscan.plugins.manager as m
        pm = m.get_plugin_manager()
        sp.list_scanpaths(); sp.get_scanpath('sweep')
        print(before, len(names) > 10, pm is m.get_plugin_manager())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


# ----------------------------------------------------------------------------- the example plugin
@pytest.fixture(scope="module")
def example_installed():
    try:
        importlib.metadata.distribution(EXAMPLE_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"the example plugin is not installed: run `pip install --no-deps {EXAMPLE_DIR}` "
            "(the README's test command and .ci/run do this)"
        )


def test_example_plugin_names_appear_everywhere(example_installed):
    assert "window-snake" in list_scanpaths()
    assert SCANPATHS.source("window-snake") == "example"
    assert "window-4" in list_schedules()
    assert "ema" in list_mixers()
    paths = get_schedule("window-4", 6)
    assert [p.name for p in paths] == ["window-snake", "zigzag-s1", "window-snake", "zigzag-s5",
                                       "window-snake", "zigzag-s1"]


def test_example_plugin_in_cli(example_installed):
    out = run_cli("scans", "list", "window*")
    assert out.returncode == 0, out.stderr
    assert "window-snake" in out.stdout and "example" in out.stdout
    out = run_cli("plugins", "list")
    assert out.returncode == 0, out.stderr
    assert f"example  [loaded]  {EXAMPLE_DIST}==0.1.0" in out.stdout
    assert "window-snake" in out.stdout and "window-4" in out.stdout and "ema" in out.stdout


def test_example_plugin_model_by_name(example_installed):
    """A plugin's schedule and mixer work in a model exactly where built-ins do."""
    import torch

    from zigscan.backbones import create_model

    model = create_model("zigma-T/2", mixer="ema", schedule="window-4", input_size=8, in_channels=1,
                         num_classes=3, depth=2, hidden_size=32)
    x = torch.randn(2, 1, 8, 8)
    out = model(x, torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == x.shape


def test_disable_all_and_by_name(example_installed):
    code = "import zigscan.scanpaths as sp; print('window-snake' in sp.list_scanpaths())"
    assert run_py(code).stdout.strip() == "True"
    assert run_py(code, env={"ZIGSCAN_DISABLE_PLUGINS": "1"}).stdout.strip() == "False"
    assert run_py(code, env={"ZIGSCAN_DISABLE_PLUGINS": "example"}).stdout.strip() == "False"
    assert run_py(code, env={"ZIGSCAN_DISABLE_PLUGINS": "someother"}).stdout.strip() == "True"


# ----------------------------------------------------------------------------- failures (real dists)
FAILURES = {
    "import_error": (HEADER + "import package_that_does_not_exist\n", "failed to load", ""),
    "raises": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            raise RuntimeError("boom")
    """), "raised in hook zigscan_register_scanpaths: RuntimeError: boom", ""),
    "not_a_list": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return FunctionScanPath("lonely", lambda s: np.arange(s[0] * s[1]))
    """), "must return a list", ""),
    "wrong_item": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return ["sweep-ish"]
    """), "expected zigscan.scanpaths.base.ScanPath", ""),
    "duplicate": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return [FunctionScanPath("sweep", lambda s: np.arange(s[0] * s[1]))]
    """), "registers scan path 'sweep', which 'zigscan' already registered", "sweep"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_broken_plugin_gets_a_clear_error(tmp_path, case):
    code, expected, name = FAILURES[case]
    plugin = f"broken_{case}"
    make_plugin_dist(tmp_path, plugin, code)
    out = run_cli("scans", "list", path=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr, out.stderr
    msg = out.stderr
    assert f"plugin '{plugin}'" in msg and expected in msg and name in msg
    if case != "import_error":
        assert "zigscan_register_scanpaths" in msg
    assert f"ZIGSCAN_DISABLE_PLUGINS={plugin}" in msg  # says how to get going again
    # disabling it restores a working zigscan
    ok = run_cli("scans", "list", "zigzag-s0", path=tmp_path, env={"ZIGSCAN_DISABLE_PLUGINS": plugin})
    assert ok.returncode == 0 and "zigzag-s0" in ok.stdout, ok.stderr
    # `plugins list` still runs and points at the culprit
    rep = run_cli("plugins", "list", path=tmp_path)
    assert rep.returncode == 1 and f"{plugin}  [failed]" in rep.stdout


def test_two_plugins_same_name_names_both(tmp_path):
    code = plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return [FunctionScanPath("twin", lambda s: np.arange(s[0] * s[1]))]
    """)
    make_plugin_dist(tmp_path, "first_plug", code)
    make_plugin_dist(tmp_path, "second_plug", code)
    out = run_py("import zigscan.scanpaths as sp; sp.list_scanpaths()", path=tmp_path)
    assert out.returncode != 0
    assert "'twin'" in out.stderr and "first_plug" in out.stderr and "second_plug" in out.stderr


# ----------------------------------------------------------------------------- in-process plugins
def test_register_plugin_in_code_and_atomic_failure():
    good = types.SimpleNamespace(
        zigscan_register_scanpaths=hookimpl(lambda: [
            FunctionScanPath("test-reverse", lambda s: list(range(s[0] * s[1]))[::-1], continuous=False)
        ])
    )
    bad = types.SimpleNamespace(
        zigscan_register_scanpaths=hookimpl(lambda: [
            FunctionScanPath("test-new-ok", lambda s: list(range(s[0] * s[1]))),
            FunctionScanPath("zigzag-s0", lambda s: list(range(s[0] * s[1]))),  # clashes with a built-in
        ])
    )
    try:
        list_scanpaths()  # registries in use: a new plugin must reach them at once
        register_plugin(good, name="good_inline")
        assert get_scanpath("test-reverse").order((2, 3)).tolist() == [5, 4, 3, 2, 1, 0]
        before = list_scanpaths()
        with pytest.raises(PluginError, match="bad_inline.*zigzag-s0"):
            register_plugin(bad, name="bad_inline")
        assert list_scanpaths() == before  # nothing half-registered ("test-new-ok" absent)
        assert "test-new-ok" not in list_scanpaths()
    finally:
        reset_plugins()
    assert "test-reverse" not in list_scanpaths()


# ----------------------------------------------------------------------------- what a plugin registers is checked
CHECKED = {
    "bad_name": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return [FunctionScanPath("fine-path", lambda s: np.arange(s[0] * s[1])),
                    FunctionScanPath("bad name*", lambda s: np.arange(s[0] * s[1]))]
    """), "invalid scan path name 'bad name*'", "zigscan_register_scanpaths"),
    "not_a_permutation": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return [FunctionScanPath("twice-zero", lambda s: np.zeros(s[0] * s[1], dtype=int))]
    """), "'twice-zero', which fails on the 4x6 grid", "zigscan_register_scanpaths"),
    "wrong_length_3d": (plug("""
        @hookimpl
        def zigscan_register_scanpaths():
            return [FunctionScanPath("short-3d", lambda s: np.arange(s[0] * s[1]), ndim=3)]
    """), "'short-3d', which fails on the 2x3x4 grid", "zigscan_register_scanpaths"),
    "schedule_missing_path": (plug("""
        from zigscan.scanpaths.schedules import Schedule
        @hookimpl
        def zigscan_register_schedules():
            return [Schedule("ghost-2", ["sweep", "no-such-path"])]
    """), "names the scan path 'no-such-path'", "zigscan_register_schedules"),
    "exit_at_import": (HEADER + "import sys\nsys.exit(3)\n", "called sys.exit(3) while being imported", ""),
    "exit_in_hook": (plug("""
        import sys
        @hookimpl
        def zigscan_register_scanpaths():
            sys.exit("bye")
    """), "called sys.exit('bye')", "zigscan_register_scanpaths"),
}


@pytest.mark.parametrize("case", sorted(CHECKED))
def test_plugin_registrations_are_checked_and_blame_the_plugin(tmp_path, case):
    code, expected, hook = CHECKED[case]
    plugin = f"checked_{case}"
    make_plugin_dist(tmp_path, plugin, code)
    # first lookup and the next one blame the same plugin; the built-ins are whole; the plugin added nothing
    out = run_py("""
        from zigscan.plugins import PluginError
        from zigscan.scanpaths.registry import SCANPATHS
        from zigscan.scanpaths.schedules import SCHEDULES
        from zigscan.scanpaths.schedules import get_schedule
        for attempt in range(2):
            try:
                get_schedule("zigzag-8", 4)
                print("no error")
            except PluginError as exc:
                print("ERR", exc.plugin, "|", exc)
        print("builtins", sum(SCANPATHS._sources.get(n) == "zigscan" for n in SCANPATHS._entries),
              ",".join(sorted(set(SCANPATHS._sources.values()) | set(SCHEDULES._sources.values()))))
    """, path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    for line in lines[:2]:
        assert line.startswith(f"ERR {plugin} |") and expected in line and f"plugin {plugin!r}" in line, line
        assert hook in line and f"ZIGSCAN_DISABLE_PLUGINS={plugin}" in line
    count, sources = lines[2].split()[1:]
    assert int(count) > 20 and "zigscan" in sources.split(",")  # the built-ins are all there ...
    assert plugin not in sources.split(",")  # ... and nothing of the bad plugin
    ok = run_cli("scans", "list", "zigzag-s0", path=tmp_path, env={"ZIGSCAN_DISABLE_PLUGINS": plugin})
    assert ok.returncode == 0 and "zigzag-s0" in ok.stdout, ok.stderr


def test_a_bad_plugin_leaves_the_good_ones_registered_and_takes_back_its_other_hooks():
    good = types.SimpleNamespace(zigscan_register_scanpaths=hookimpl(
        lambda: [FunctionScanPath("good-one", lambda s: list(range(s[0] * s[1])))]))
    half = types.SimpleNamespace(
        zigscan_register_scanpaths=hookimpl(lambda: [FunctionScanPath("half-path", lambda s: list(range(s[0] * s[1])))]),
        zigscan_register_schedules=hookimpl(lambda: [__import__("zigscan.scanpaths.schedules", fromlist=["x"]).Schedule(
            "half-sched", ["half-path", "missing-path"])]),
    )
    try:
        list_scanpaths(), list_schedules()
        register_plugin(good, name="good_inline")
        with pytest.raises(PluginError, match="half_inline.*zigscan_register_schedules.*'missing-path'"):
            register_plugin(half, name="half_inline")
        names = list_scanpaths()
        assert "good-one" in names and "half-path" not in names  # its scan-path hook was taken back
        assert "half-sched" not in list_schedules()
    finally:
        reset_plugins()
