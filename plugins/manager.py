"""The plugin manager: finds plugins, calls their hooks and fills zigscan's registries.

Policy (documented in the README, "Write a plugin"):

* Plugins load lazily, once, on the first use of any registry. Built-ins are the plugin ``zigscan``.
* ``ZIGSCAN_DISABLE_PLUGINS=1`` (or ``all``/``true``) skips every entry point;
  ``ZIGSCAN_DISABLE_PLUGINS=name1,name2`` skips those (entry-point or distribution names).
* A broken plugin stops zigscan with a ``PluginError`` that names the plugin, the hook and the
  offending name, and says how to disable it. We fail loudly rather than run on without a plugin
  the user asked for: a training run that silently lost its scan order would waste GPU days.
  ``zigscan plugins list`` still works and shows the error next to the broken plugin.
* Registering is all-or-nothing per plugin: every entry a plugin returns is checked before any is
  added (a valid, unique name; a scan path must be a permutation on small grids, 4x6 and 3x5, or 2x3x4
  for video, with segments that divide the sequence; a schedule must name registered scan paths of its
  own ndim; a mixer needs a callable factory). A bad plugin adds nothing, anything it added through an
  earlier hook is taken back, and every later lookup raises the same error naming it, while the
  built-ins and the other plugins stay registered. ``sys.exit`` while importing a plugin or inside a
  hook is reported as that plugin's error, not obeyed.
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
_failed: dict[str, PluginError] = {}  # plugin -> why its registrations were refused (raised again on lookup)

# Grids every registered scan path must order as a permutation (odd and even sides, non-square).
CHECK_SHAPES: dict[int, tuple[tuple[int, ...], ...]] = {2: ((4, 6), (3, 5)), 3: ((2, 3, 4),)}
CHECK_DEPTH = 8  # schedules are checked by the names they give a model of this depth


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
        except (Exception, SystemExit) as exc:  # import error, bad hookimpl signature, sys.exit() at import...
            if isinstance(exc, SystemExit):
                exc = RuntimeError(f"it called sys.exit({exc.code!r}) while being imported")
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
        was_loaded = {hook: registry.loaded for hook, (registry, _) in _registries.items()}
        try:
            for hook, (registry, expected) in list(_registries.items()):
                if registry.loaded:
                    _apply(pm, hook, registry, expected, only=plugin_name)
        except PluginError:
            _take_back(plugin_name)
            _failed.pop(plugin_name, None)
            for hook, (registry, _) in _registries.items():  # the registries work on without it
                registry._loaded = was_loaded.get(hook, registry.loaded)
            pm.unregister(name=plugin_name)
            _infos.pop(plugin_name, None)
            raise
        return plugin_name


def fill_registry(hook: str, registry: Any, expected: type) -> None:
    """Push every plugin's results of ``hook`` into ``registry`` (called by the registry's loader)."""
    pm = get_plugin_manager()
    with _lock:
        _registries[hook] = (registry, expected)
        try:
            _apply(pm, hook, registry, expected)  # the built-ins and the good plugins, even when one failed
        except PluginError as exc:
            raise _load_errors[0] if _load_errors else exc from None
        if _load_errors:  # a plugin that failed to import blocks every registry, naming it
            raise _load_errors[0]


def _apply(pm: pluggy.PluginManager, hook: str, registry: Any, expected: type, *, only: str | None = None) -> None:
    """Call ``hook`` on the plugins not yet applied; register each plugin's entries only when all of them
    pass the checks (all-or-nothing per plugin). Raises the first failed plugin's ``PluginError`` after
    the good plugins are registered."""
    first: PluginError | None = None
    if hook == "zigscan_register_schedules":  # schedules are checked against the scan paths: load those first
        from zigscan.scanpaths.registry import SCANPATHS

        SCANPATHS.ensure_loaded()
    for impl in getattr(pm.hook, hook).get_hookimpls():  # registration order: built-ins first
        plugin = impl.plugin_name
        if (plugin, hook) in _applied or (only is not None and plugin != only):
            continue
        if plugin in _failed:
            first = first or _failed[plugin]
            continue
        try:
            staged = _collect(impl, plugin, hook, registry, expected)
        except PluginError as exc:
            _fail(plugin, exc)
            first = first or exc
            continue
        for name, obj in staged:
            registry.register(name, obj, source=plugin)
            if plugin in _infos:
                _infos[plugin].registered.setdefault(hook, []).append(name)
        _applied.add((plugin, hook))
    if first is None and only is None:
        first = next(iter(_failed.values()), None)  # a plugin that failed in another hook blocks all
    if first is not None:
        raise first


def _collect(impl: Any, plugin: str, hook: str, registry: Any, expected: type) -> list[tuple[str, Any]]:
    """One plugin's result of one hook, every entry checked; raises ``PluginError`` naming the first bad one."""

    def error(what: str, name: str = "") -> PluginError:
        return PluginError(f"plugin {plugin!r}: hook {hook} {what}. {_disable_hint(plugin)}",
                           plugin=plugin, hook=hook, name=name)

    try:
        result = impl.function()
    except (Exception, SystemExit) as exc:
        kind = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise PluginError(f"plugin {plugin!r} raised in hook {hook}: {kind}. {_disable_hint(plugin)}",
                          plugin=plugin, hook=hook) from exc
    if result is None:
        result = []
    if not isinstance(result, (list, tuple)):
        raise error(f"must return a list of {expected.__name__}, got {type(result).__name__}")
    staged: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for obj in result:
        name = getattr(obj, "name", None)
        if not isinstance(obj, expected):
            raise error(f"returned {obj!r} ({type(obj).__name__}); expected {expected.__module__}."
                        f"{expected.__name__} instances", str(name or ""))
        if not isinstance(name, str) or not name:
            raise error(f"returned a {registry.kind} without a name ({obj!r})")
        if name != name.strip() or any(c in name for c in "*?[]@") or any(c.isspace() for c in name):
            raise error(f"returned the invalid {registry.kind} name {name!r}: use a non-empty name without "
                        "spaces and without the characters * ? [ ] @", name)
        other = plugin if name in seen else (registry.source(name) if name in registry._entries else None)
        if other is not None:
            raise error(f"registers {registry.kind} {name!r}, which {other!r} already registered. Rename it in "
                        "one of the two plugins", name)
        problem = _check_entry(hook, obj)
        if problem:
            raise error(f"returned {registry.kind} {name!r}, which {problem}", name)
        seen.add(name)
        staged.append((name, obj))
    return staged


def _check_entry(hook: str, obj: Any) -> str:
    """What is wrong with one registered object ("" when nothing): scan paths are built on small grids,
    schedules resolved, mixer factories checked for being callable."""
    if hook == "zigscan_register_scanpaths":
        ndim = getattr(obj, "ndim", None)
        if ndim not in CHECK_SHAPES:
            return f"has ndim={ndim!r}; expected 2 (images) or 3 (video)"
        for shape in CHECK_SHAPES[ndim]:
            grid = "x".join(map(str, shape))
            try:
                order = obj.order(shape)  # checks: L indices, each once (a permutation)
                segments = int(obj.segments(shape))
            except Exception as exc:
                return f"fails on the {grid} grid: {type(exc).__name__}: {exc}"
            if segments < 1 or order.numel() % segments:
                return f"has {segments} segments on the {grid} grid, which do not divide its {order.numel()} tokens"
    elif hook == "zigscan_register_schedules":
        from zigscan.scanpaths.registry import get_scanpath

        try:
            names = obj.names(CHECK_DEPTH)
        except Exception as exc:
            return f"cannot name the paths of a depth-{CHECK_DEPTH} model: {type(exc).__name__}: {exc}"
        for name in dict.fromkeys(names):
            try:
                path = get_scanpath(name)
            except Exception as exc:
                return f"names the scan path {name!r}, which cannot be used: {exc}"
            if getattr(path, "ndim", None) != getattr(obj, "ndim", None):
                return f"is {obj.ndim}D but names the {path.ndim}D scan path {name!r}"
    elif hook == "zigscan_register_mixers" and not callable(getattr(obj, "factory", None)):
        return f"has a factory that is not callable ({getattr(obj, 'factory', None)!r})"
    return ""


def _fail(plugin: str, exc: PluginError) -> None:
    """Refuse ``plugin``: take back what it registered through other hooks, remember why."""
    _failed[plugin] = exc
    _take_back(plugin)
    info = _infos.get(plugin)
    if info is not None:
        info.status, info.error = "failed", str(exc)


def _take_back(plugin: str) -> None:
    info = _infos.get(plugin)
    for hook, names in (info.registered.items() if info is not None else ()):
        registry = _registries.get(hook, (None, None))[0]
        if registry is None:
            continue
        for name in names:
            if registry._sources.get(name) == plugin:
                registry.unregister(name)
        registry._loaded = False  # the next lookup reports the plugin instead of "unknown name"
        _applied.discard((plugin, hook))
    if info is not None:
        info.registered.clear()


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
        _failed.clear()
