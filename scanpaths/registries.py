"""A small generic name -> object registry, shared by every registry of zigscan.

Scan paths, schedules, mixers, model presets and interpolant paths each keep one ``Registry``. It gives:

* shell-style wildcard listing (``names("zigzag-*")``),
* an ``UnknownNameError`` that lists the closest names and the command that shows all of them,
* lazy plugin loading: the first lookup calls ``loader`` once (``zigscan.plugins`` fills the
  registry through its hooks), so built-ins and third-party plugins arrive through the same path,
* the origin of every entry (``"zigscan"`` for built-ins, the plugin name otherwise).

This module imports nothing of zigscan at load time; ``plugin_loader`` is the one way from a registry
into ``zigscan.plugins`` (tests/test_imports.py checks it).
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError", "DuplicateNameError", "plugin_loader"]

MAX_SUGGESTIONS = 5  # close matches named in an UnknownNameError
CLOSE_MATCH_CUTOFF = 0.5  # difflib similarity a name needs to be suggested


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry has. ``str(err)`` is the full, helpful message."""

    def __init__(self, message: str, *, name: str = "", suggestions: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.name = name
        self.suggestions = suggestions

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return self.message


class DuplicateNameError(ValueError):
    """A name registered twice (by two plugins, or by a plugin and user code)."""


class Registry(Generic[T]):
    """Name -> object mapping with wildcard listing, close-match errors and lazy plugin loading.

    Args:
        kind: what the entries are, for messages ("scan path", "mixer", ...).
        list_command: the command that lists every name, quoted in errors.
        loader: ``loader(registry)`` is called once, before the first lookup, to let plugins register
            (``plugin_loader`` builds the standard one). ``None`` for a plain registry.
    """

    def __init__(self, kind: str, *, list_command: str, loader: Callable[[Registry[T]], None] | None = None):
        self.kind = kind
        self.list_command = list_command
        self._loader = loader
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._loaded = loader is None
        self._loading = False
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- loading
    def ensure_loaded(self) -> None:
        """Run the plugin loader once. Re-entrant calls (a plugin looking names up) are no-ops."""
        if self._loaded or self._loading:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                assert self._loader is not None
                self._loader(self)
                self._loaded = True
            finally:
                self._loading = False

    # ---------------------------------------------------------------- writing
    def register(self, name: str, obj: T, *, source: str = "user", override: bool = False) -> T:
        """Add ``obj`` under ``name``. A name taken already raises unless ``override=True``."""
        if not isinstance(name, str) or not name or name != name.strip() or any(c in name for c in "*?[]"):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: use a non-empty string without spaces at the ends "
                "and without the wildcard characters * ? [ ]"
            )
        with self._lock:
            if name in self._entries and not override:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: first by {self._sources[name]!r}, "
                    f"again by {source!r}. Rename one of them, or pass override=True to replace it on purpose."
                )
            self._entries[name] = obj
            self._sources[name] = source
        return obj

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)
            self._sources.pop(name, None)

    def reset(self) -> None:
        """Forget everything plugins registered and load them again on next use (for tests and
        ``zigscan.plugins.reset_plugins``). Entries registered directly by user code stay."""
        with self._lock:
            for name in [n for n, src in self._sources.items() if src != "user"]:
                self.unregister(name)
            self._loaded = self._loader is None

    @property
    def loaded(self) -> bool:
        return self._loaded

    # ---------------------------------------------------------------- reading
    def get(self, name: str) -> T:
        self.ensure_loaded()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard (``*``, ``?``, ``[abc]``)."""
        self.ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def source(self, name: str) -> str:
        self.ensure_loaded()
        if name not in self._sources:
            raise self.unknown(name)
        return self._sources[name]

    def unknown(self, name: object) -> UnknownNameError:
        """The error for a name that is not registered, with close matches and the listing command."""
        known = list(self._entries)
        close = tuple(difflib.get_close_matches(str(name), known, n=MAX_SUGGESTIONS, cutoff=CLOSE_MATCH_CUTOFF))
        if not close:  # prefix matches help for names like "zigzag" -> "zigzag-s0".."zigzag-s7"
            close = tuple(sorted(n for n in known if n.startswith(str(name)))[:MAX_SUGGESTIONS])
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Run `{self.list_command}` to see all {len(known)} names.",
            name=str(name),
            suggestions=close,
        )

    def __contains__(self, name: object) -> bool:
        self.ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def plugin_loader(hook: str, expected: Callable[[], type]) -> Callable[[Registry], None]:
    """The standard loader: fill ``registry`` from every plugin's ``hook`` (built-ins included).

    ``expected`` returns the class every registered object must be an instance of (a callable, so the
    class can be imported lazily). This is the one place where a registry reaches ``zigscan.plugins``.
    """

    def load(registry: Registry) -> None:
        from zigscan.plugins.manager import fill_registry

        fill_registry(hook, registry, expected())

    return load
