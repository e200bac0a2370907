"""The plugin manager: finds plugins, calls their hooks and fills zigscan's registries.

Policy (documented in the README, "Write a plugin"):

* Plugins load lazily, once, on the first use of any registry. Built-ins are the plugin ``zigscan``.
* ``ZIGSCAN_DISABLE_PLUGINS=1`` (or ``all``/``true``) skips every entry point;
  ``ZIGSCAN_DISABLE_PLUGINS=name1,name2`` skips those (entry-point or distribution names).
* A broken plugin stops zigscan with a ``PluginError`` that names the plugin, the hook and the
  offending name, and says how to disable it. We fail loudly rather than run on without a plugin
  the user asked for: a training run that silently lost its scan order would waste GPU days.
  ``zigscan plugins list`` still works and shows the error next to the broken plugin.
* Registering is all-or-nothing per hook call: if any plugin's result is bad, no entry of that hook
  is added, so nothing half-registered is left behind.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs

__all__ = [
    "PluginError",
    "PluginInfo",
    "get_plugin_manager",
    "fill_registry",
    "register_plugin",
    "plugin_report",
    "reset_plugins",
    "disabled_plugins",
]

BUILTIN_NAME = "zigscan"
_DISABLE_ENV = "ZIGSCAN_DISABLE_PLUGINS"


class PluginError(RuntimeError):
    """A plugin failed to load or registered something invalid. The message names the plugin, the
    hook and the name, and tells how to disable the plugin; the attributes carry the same facts."""

    def __init__(self, message: str, *, plugin: str = "", hook: str = "", name: str = "") -> None:
        super().__init__(message)
        self.plugin, self.hook, self.name = plugin, hook, name


@dataclass
class PluginInfo:
    """What ``zigscan plugins list`` shows for one plugin."""

    name: str
    origin: str  # "built-in", "distribution==version (module)", or "registered in code"
    status: str = "loaded"  # loaded | disabled | failed
    error: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)  # hook -> names


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_applied: set[tuple[str, str]] = set()  # (plugin name, hook) already pushed into its registry
_registries: dict[str, tuple[Any, type]] = {}  # hook -> (registry, expected type)
_load_errors: list[PluginError] = []


def disabled_plugins() -> tuple[bool, set[str]]:
    """(all entry points disabled?, names disabled) from ``ZIGSCAN_DISABLE_PLUGINS``."""
    raw = os.environ.get(_DISABLE_ENV, "").strip()
    if raw.lower() in {"1", "all", "true", "yes"}:
        return True, set()
    return False, {n.strip() for n in raw.split(",") if n.strip() and n.strip() != "0"}


def _disable_hint(name: str) -> str:
    return f"To run without it, set {_DISABLE_ENV}={name} (or uninstall it)."


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager with the built-ins and every enabled entry point registered."""
    global _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        from . import builtins

        pm.register(builtins, name=BUILTIN_NAME)
        _infos[BUILTIN_NAME] = PluginInfo(BUILTIN_NAME, "built-in")
        _load_entry_points(pm)
        _pm = pm
        return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    all_off, names_off = disabled_plugins()
    for ep in sorted(importlib_metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        origin = f"{dist_name}=={dist.version} ({ep.value})" if dist is not None else ep.value
        if ep.name in _infos:  # the same entry point seen twice (e.g. two install paths)
            continue
        info = PluginInfo(ep.name, origin)
        _infos[ep.name] = info
        if all_off or ep.name in names_off or dist_name in names_off:
            info.status = "disabled"
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # import error, bad hookimpl signature, ...
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            _load_errors.append(
                PluginError(
                    f"plugin {ep.name!r} (from {origin}) failed to load: {type(exc).__name__}: {exc}. "
                    f"{_disable_hint(ep.name)}",
                    plugin=ep.name,
                )
            )


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module from code (no entry point needed), e.g. in a notebook.

    Registries already in use receive its entries at once. Returns the plugin's name.
    """
    pm = get_plugin_manager()
    with _lock:
        try:
            plugin_name = pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"cannot register plugin {name or plugin!r}: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name or plugin!r} has an invalid hook: {exc}") from exc
        assert plugin_name is not None
        _infos[plugin_name] = PluginInfo(plugin_name, "registered in code")
        try:
            for hook, (registry, expected) in list(_registries.items()):
                if registry.loaded:
                    _apply(pm, hook, registry, expected)
        except PluginError:
            pm.unregister(name=plugin_name)
            _infos.pop(plugin_name, None)
            raise
        return plugin_name


def fill_registry(hook: str, registry: Any, expected: type) -> None:
    """Push every plugin's results of ``hook`` into ``registry`` (called by the registry's loader)."""
    pm = get_plugin_manager()
    with _lock:
        _registries[hook] = (registry, expected)
        if _load_errors:
            raise _load_errors[0]
        _apply(pm, hook, registry, expected)


def _apply(pm: pluggy.PluginManager, hook: str, registry: Any, expected: type) -> None:
    """Call ``hook`` on plugins not yet applied; validate everything; then register all at once."""
    staged: list[tuple[str, str, Any]] = []  # (plugin, name, object)
    for impl in getattr(pm.hook, hook).get_hookimpls():  # registration order: built-ins first
        plugin = impl.plugin_name
        if (plugin, hook) in _applied:
            continue
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} raised in hook {hook}: {type(exc).__name__}: {exc}. {_disable_hint(plugin)}",
                plugin=plugin,
                hook=hook,
            ) from exc
        if result is None:
            result = []
        if not isinstance(result, (list, tuple)):
            raise PluginError(
                f"plugin {plugin!r}: hook {hook} must return a list of {expected.__name__}, "
                f"got {type(result).__name__}. {_disable_hint(plugin)}",
                plugin=plugin,
                hook=hook,
            )
        for obj in result:
            if not isinstance(obj, expected):
                raise PluginError(
                    f"plugin {plugin!r}: hook {hook} returned {obj!r} ({type(obj).__name__}); "
                    f"expected {expected.__module__}.{expected.__name__} instances. {_disable_hint(plugin)}",
                    plugin=plugin,
                    hook=hook,
                    name=str(getattr(obj, "name", "")),
                )
            staged.append((plugin, getattr(obj, "name", None), obj))

    seen: dict[str, str] = {}
    for plugin, name, _ in staged:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r}: hook {hook} returned an entry without a name. {_disable_hint(plugin)}",
                plugin=plugin,
                hook=hook,
            )
        other = seen.get(name) or (registry.source(name) if name in registry._entries else None)
        if other is not None:
            raise PluginError(
                f"plugin {plugin!r}: hook {hook} registers {registry.kind} {name!r}, which {other!r} already "
                f"registered. Rename it in one of the two plugins. {_disable_hint(plugin)}",
                plugin=plugin,
                hook=hook,
                name=name,
            )
        seen[name] = plugin

    for plugin, name, obj in staged:
        registry.register(name, obj, source=plugin)
        if plugin in _infos:
            _infos[plugin].registered.setdefault(hook, []).append(name)
    for impl in getattr(pm.hook, hook).get_hookimpls():
        _applied.add((impl.plugin_name, hook))


def plugin_report() -> list[PluginInfo]:
    """Every known plugin with its origin, status and what it registered, after loading all
    registries (errors are recorded in the report instead of raised)."""
    from .registries import all_registries

    for registry in all_registries():
        try:
            registry.ensure_loaded()
        except PluginError as exc:
            info = _infos.get(exc.plugin)
            if info is not None and info.status == "loaded":
                info.status, info.error = "failed", str(exc)
    return [_infos[n] for n in sorted(_infos, key=lambda n: (n != BUILTIN_NAME, n))]


def reset_plugins() -> None:
    """Forget all plugins and their registrations; they load again on the next registry use.

    Meant for tests and for picking up a plugin installed in a running interpreter."""
    global _pm
    with _lock:
        for registry, _ in _registries.values():
            registry.reset()
        _pm = None
        _infos.clear()
        _applied.clear()
        _load_errors.clear()
