"""The scan-path registry: ``SCANPATHS``, ``get_scanpath`` (with ``NAME@ARG`` variants), ``list_scanpaths``.

The generic ``Registry`` lives in ``registries.py``; the schedule registry ``SCHEDULES`` sits with
``Schedule`` in ``schedules.py``. Built-ins arrive through the plugin ``zigscan`` like any plugin.
"""

from __future__ import annotations

import threading

from .registries import Registry, plugin_loader

__all__ = ["SCANPATHS", "get_scanpath", "list_scanpaths"]


def _scanpath_type() -> type:
    from .base import ScanPath

    return ScanPath


SCANPATHS: Registry = Registry(
    "scan path", list_command="zigscan scans list", loader=plugin_loader("zigscan_register_scanpaths", _scanpath_type)
)


_VARIANTS: dict[tuple[object, str], object] = {}  # (base path, arg) -> variant, so caches are shared
_VARIANTS_LOCK = threading.Lock()


def get_scanpath(name: str):
    """The registered scan path ``name``; ``NAME@ARG`` gives a parametrized variant of a registered
    family (``random@7``: seed 7). Unknown names raise ``UnknownNameError`` with close matches."""
    if isinstance(name, str) and "@" in name and name not in SCANPATHS:
        base_name, arg = name.split("@", 1)
        base = SCANPATHS.get(base_name)
        with _VARIANTS_LOCK:
            key = (base, arg)
            if key not in _VARIANTS:
                _VARIANTS[key] = base.variant(arg)
            return _VARIANTS[key]
    return SCANPATHS.get(name)


def list_scanpaths(pattern: str = "*") -> list[str]:
    """Sorted names of the registered scan paths matching a shell-style wildcard."""
    return SCANPATHS.names(pattern)
