"""The registries that plugin hooks fill, in hook order (read by the manager and ``load_all_registries``)."""

from __future__ import annotations

from typing import Any

__all__ = ["all_registries"]


def all_registries() -> list[Any]:
    """Every registry fed by a hook, in hook order (scan paths, schedules, mixers, models)."""
    from zigscan.backbones.mixers.registry import MIXERS
    from zigscan.backbones.presets import MODELS
    from zigscan.scanpaths.registry import SCANPATHS
    from zigscan.scanpaths.schedules import SCHEDULES

    return [SCANPATHS, SCHEDULES, MIXERS, MODELS]
