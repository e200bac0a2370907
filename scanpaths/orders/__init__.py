"""Built-in scan orders, one module per family. ``builtin_scanpaths()`` returns fresh instances; they
reach the registry through the built-in plugin ``zigscan`` (plugins/builtins.py), like any plugin's."""

from __future__ import annotations

from importlib import import_module

from ..base import ScanPath

__all__ = ["builtin_scanpaths", "BUILTIN_MODULES"]

# Each module defines ``scanpaths() -> list[ScanPath]``.
BUILTIN_MODULES = ("sweep", "zigzag", "hilbert", "randperm", "spiral", "zorder", "diagonal", "video")


def builtin_scanpaths() -> list[ScanPath]:
    paths: list[ScanPath] = []
    for mod in BUILTIN_MODULES:
        paths.extend(import_module(f"{__name__}.{mod}").scanpaths())
    return paths
