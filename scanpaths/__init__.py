"""zigscan.scanpaths: scan orders over image and video tokens, schedules, and helpers to apply them.

    from zigscan.scanpaths import get_scanpath, list_scanpaths, get_schedule, arrange, rearrange
    path = get_scanpath("zigzag-s3")
    order = path.order((H, W))            # LongTensor [L]; order[k] = raster index visited at step k
    paths = get_schedule("zigzag-8", depth=12)

Plotting (matplotlib) lives in ``zigscan.scanpaths.plot`` and is imported only when used.
"""

from .apply import arrange, fold_segments, rearrange, scan_apply, transition_index, unfold_segments
from .base import FunctionScanPath, ScanPath, check_shape
from .locality import LocalityStats, format_locality_table, locality, locality_table
from .registries import DuplicateNameError, Registry, UnknownNameError
from .registry import SCANPATHS, get_scanpath, list_scanpaths
from .schedules import (
    SCHEDULES,
    Schedule,
    get_schedule,
    get_schedule_names,
    list_schedules,
    register_schedule,
)
from .testing import check_scanpath, check_schedule


def register_scanpath(path: ScanPath, *, source: str = "user", override: bool = False) -> ScanPath:
    """Add a scan path to the registry from code (plugins return paths from their hook instead)."""
    if not isinstance(path, ScanPath):
        raise TypeError(f"register_scanpath expects a ScanPath, got {type(path).__name__}")
    return SCANPATHS.register(path.name, path, source=source, override=override)


__all__ = [
    "FunctionScanPath",
    "ScanPath",
    "check_shape",
    "SCANPATHS",
    "SCHEDULES",
    "DuplicateNameError",
    "Registry",
    "UnknownNameError",
    "get_scanpath",
    "list_scanpaths",
    "register_scanpath",
    "Schedule",
    "get_schedule",
    "get_schedule_names",
    "list_schedules",
    "register_schedule",
    "arrange",
    "rearrange",
    "fold_segments",
    "unfold_segments",
    "transition_index",
    "scan_apply",
    "LocalityStats",
    "locality",
    "locality_table",
    "format_locality_table",
    "check_scanpath",
    "check_schedule",
]
