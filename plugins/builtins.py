"""The built-in plugin ``zigscan``: registers zigscan's own orders, schedules, mixers and models
through the same hooks as any third-party plugin. Imports are inside the hooks so that looking up a
scan path never imports the networks."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def zigscan_register_scanpaths() -> list:
    from zigscan.scanpaths.orders import builtin_scanpaths

    return builtin_scanpaths()


@hookimpl
def zigscan_register_schedules() -> list:
    from zigscan.scanpaths.schedules import builtin_schedules

    return builtin_schedules()


@hookimpl
def zigscan_register_mixers() -> list:
    from zigscan.backbones.mixers import builtin_mixers

    return builtin_mixers()


@hookimpl
def zigscan_register_models() -> list:
    from zigscan.backbones.presets import builtin_models

    return builtin_models()
