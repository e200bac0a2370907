"""zigscan.scanpaths: scan orders over image and video tokens, schedules, and helpers to apply them."""

from .base import FunctionScanPath, ScanPath, check_shape
from .registry import SCANPATHS, SCHEDULES, DuplicateNameError, Registry, UnknownNameError

__all__ = [
    "FunctionScanPath",
    "ScanPath",
    "check_shape",
    "SCANPATHS",
    "SCHEDULES",
    "DuplicateNameError",
    "Registry",
    "UnknownNameError",
]
