"""zigscan.plugins: pluggy hook specifications, the plugin manager and the built-in plugin.

Write a plugin (see README, "Write a plugin", and ``examples/zigscan-example-plugin``)::

    from zigscan.plugins import hookimpl
    from zigscan.scanpaths import FunctionScanPath

    @hookimpl
    def zigscan_register_scanpaths():
        return [FunctionScanPath("diagonal", my_order_fn, continuous=False)]
"""

from __future__ import annotations

from .hookspecs import ENTRY_POINT_GROUP, PROJECT, hookimpl, hookspec
from .manager import (
    PluginError,
    PluginInfo,
    disabled_plugins,
    fill_registry,
    get_plugin_manager,
    plugin_report,
    register_plugin,
    reset_plugins,
)
from .registries import all_registries

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "hookimpl",
    "hookspec",
    "PluginError",
    "PluginInfo",
    "disabled_plugins",
    "fill_registry",
    "get_plugin_manager",
    "plugin_report",
    "register_plugin",
    "reset_plugins",
    "load_all_registries",
]


def load_all_registries() -> None:
    """Load plugins into every registry now (instead of lazily). Raises the first PluginError."""
    first: PluginError | None = None
    for registry in all_registries():
        try:
            registry.ensure_loaded()
        except PluginError as exc:
            first = first or exc
    if first is not None:
        raise first
