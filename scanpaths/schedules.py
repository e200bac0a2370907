"""Schedules: which scan path each layer of a model uses, Omega_i = S_(i mod K).

A ``Schedule`` holds path NAMES (resolved through the scan-path registry when a model is built), either
a list cycled over depth or a function ``depth -> list of names``::

    get_schedule("zigzag-8", depth=12)            # [zigzag-s0, ..., zigzag-s7, zigzag-s0, ...]
    get_schedule(["sweep", "zigzag-s1"], depth=4)  # a list of names, as written in a config
    register_schedule(Schedule("mine", ["hilbert", "zigzag-s1"]))

Built-ins follow the official ZigMa code (CompVis/zigma, model_zigma.py): ``scan_type="zigzagN{k}"``
takes ``zigzag_path(N)[:k]`` (utils/utils_zigzag.py: s0..s7 in the order TL-row, TL-column, TR-row,
TR-column, BL-row, BL-column, BR-row, BR-column) and repeats it over depth (``zz_paths * depth``), so
``zigzag-1`` = [s0] and ``zigzag-2`` = [s0, s1]. ``zzvideo_sst`` pops the spatial zigzags s0, s1, ...
for "s" layers and alternates forward/reverse time for "t" layers: our ``video-sst``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import ScanPath
from .registries import Registry, plugin_loader
from .registry import get_scanpath

__all__ = [
    "SCHEDULES",
    "Schedule",
    "builtin_schedules",
    "get_schedule",
    "get_schedule_names",
    "list_schedules",
    "register_schedule",
]

PathNames = Sequence[str] | Callable[[int], Sequence[str]]


class Schedule:
    """A named rule giving one scan-path name per layer.

    Args:
        name: registry name, e.g. ``"zigzag-8"``.
        paths: list of path names cycled over depth (layer i uses ``paths[i % K]``), or a callable
            ``depth -> list of depth names``.
        description: one line for ``zigscan scans schedules``.
        ndim: 2 (images) or 3 (video): every path must have this ``ndim``.
    """

    def __init__(self, name: str, paths: PathNames, description: str = "", ndim: int = 2) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"schedule {name!r}: ndim must be 2 or 3, got {ndim!r}")
        if not callable(paths):
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths) or not paths:
                raise TypeError(
                    f"schedule {name!r}: paths must be a non-empty list of scan-path names or a callable "
                    f"depth -> names, got {paths!r}"
                )
            paths = tuple(paths)
        self.name = name
        self.paths = paths
        self.description = description
        self.ndim = ndim

    def names(self, depth: int) -> list[str]:
        """The path name of every layer: a list of ``depth`` names."""
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"schedule {self.name!r}: depth must be a positive int, got {depth!r}")
        if callable(self.paths):
            names = list(self.paths(depth))
            if len(names) != depth or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"schedule {self.name!r}: its function returned {names!r} for depth {depth}; "
                    f"expected a list of {depth} path names"
                )
            return names
        return [self.paths[i % len(self.paths)] for i in range(depth)]  # Omega_i = S_(i mod K)

    def __repr__(self) -> str:
        shown = "<function>" if callable(self.paths) else list(self.paths)
        return f"Schedule({self.name!r}, {shown}, ndim={self.ndim})"


def _schedule_type() -> type:
    return Schedule


# The schedule registry; built-ins arrive through the plugin ``zigscan`` like any plugin.
SCHEDULES: Registry = Registry(
    "schedule",
    list_command="zigscan scans schedules",
    loader=plugin_loader("zigscan_register_schedules", _schedule_type),
)


# ---------------------------------------------------------------------------------------------------
# Built-ins
# ---------------------------------------------------------------------------------------------------


def _video_sst(depth: int) -> list[str]:
    """spatial, spatial, temporal, repeated; spatial layers cycle spatial-zigzag-s0..s7, temporal
    layers alternate temporal / temporal-reverse (official ``zzvideo_sst``)."""
    names, n_spatial, n_temporal = [], 0, 0
    for i in range(depth):
        if i % 3 < 2:
            names.append(f"spatial-zigzag-s{n_spatial % 8}")
            n_spatial += 1
        else:
            names.append("temporal" if n_temporal % 2 == 0 else "temporal-reverse")
            n_temporal += 1
    return names


def builtin_schedules() -> list[Schedule]:
    zz = [f"zigzag-s{k}" for k in range(8)]
    return [
        Schedule("sweep", ["sweep"], "raster order in every layer (paper Table 1 baseline)"),
        Schedule("zigzag-1", zz[:1], "zigzag-s0 in every layer (official scan_type zigzagN1)"),
        Schedule("zigzag-2", zz[:2], "zigzag-s0, zigzag-s1 alternating (official zigzagN2)"),
        Schedule("zigzag-8", zz, "the eight zigzags s0..s7 cycled over depth (ZigMa default, zigzagN8)"),
        Schedule("hilbert-8", [f"hilbert-s{k}" for k in range(8)], "the eight Hilbert symmetries cycled"),
        Schedule(
            "random-8",
            ["random"] + [f"random@{s}" for s in range(1, 8)],
            "eight random orders (seeds 0..7) cycled",
        ),
        Schedule("video-sst", _video_sst, _video_sst.__doc__.split(";")[0].strip(), ndim=3),
    ]


# ---------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------


def register_schedule(schedule: Schedule, *, source: str = "user", override: bool = False) -> Schedule:
    """Add a schedule to the registry (plugins return schedules from ``zigscan_register_schedules``)."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"register_schedule expects a Schedule, got {type(schedule).__name__}")
    return SCHEDULES.register(schedule.name, schedule, source=source, override=override)


def list_schedules(pattern: str = "*") -> list[str]:
    """Sorted schedule names matching a shell-style wildcard."""
    return SCHEDULES.names(pattern)


def get_schedule_names(name_or_list: str | Sequence[str] | Schedule, depth: int) -> list[str]:
    """The path name of every layer, from a schedule name, a Schedule or a list of path names."""
    if isinstance(name_or_list, Schedule):
        return name_or_list.names(depth)
    if isinstance(name_or_list, str):
        return SCHEDULES.get(name_or_list).names(depth)
    if isinstance(name_or_list, Sequence) and name_or_list:
        return Schedule("<list>", list(name_or_list)).names(depth)
    raise TypeError(
        f"a schedule is a name (see `zigscan scans schedules`), a Schedule or a non-empty list of "
        f"scan-path names; got {name_or_list!r}"
    )


def get_schedule(name_or_list: str | Sequence[str] | Schedule, depth: int) -> list[ScanPath]:
    """One ScanPath per layer (``depth`` of them). Unknown schedule or path names raise
    ``UnknownNameError`` with close matches; mixing 2D and video paths raises ``ValueError``."""
    names = get_schedule_names(name_or_list, depth)
    paths = [get_scanpath(n) for n in names]
    dims = {p.ndim for p in paths}
    if len(dims) > 1:
        kinds = ", ".join(f"{p.name} ({p.ndim}D)" for p in dict.fromkeys(paths))
        raise ValueError(f"schedule {name_or_list!r} mixes 2D and video scan paths: {kinds}. Use one kind.")
    expected = getattr(SCHEDULES.get(name_or_list), "ndim", None) if isinstance(name_or_list, str) else None
    if expected is not None and dims != {expected}:
        raise ValueError(
            f"schedule {name_or_list!r} declares ndim={expected} but its paths are {dims.pop()}D"
        )
    return paths
