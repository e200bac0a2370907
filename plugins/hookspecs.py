"""Hook specifications of zigscan: the contract between zigscan and its plugins.

A plugin is a module (or object) with functions marked ``@zigscan.plugins.hookimpl`` whose names are
the hooks below. It is found through the entry-point group ``zigscan``::

    # pyproject.toml of your plugin distribution
    [project.entry-points.zigscan]
    my_plugin = "my_package.plugin"

Every hook takes no argument and returns a list (or ``None``); zigscan flattens the lists of all plugins
into its registries. Built-in orders, schedules, mixers and models are registered through these very
hooks by the plugin ``zigscan`` (``zigscan.plugins.builtins``). A name registered twice is an error
naming both plugins. Hook bodies here are empty on purpose: the docstrings are the contract.
"""

from __future__ import annotations

import pluggy

PROJECT = "zigscan"
ENTRY_POINT_GROUP = "zigscan"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def zigscan_register_scanpaths() -> list:
    """Return a list of ``zigscan.scanpaths.ScanPath`` instances (each with a unique ``name``).

    Each path must give a permutation for every positive shape of its ``ndim``; check yours with
    ``zigscan.scanpaths.testing.check_scanpath(path)``.
    """


@hookspec
def zigscan_register_schedules() -> list:
    """Return a list of ``zigscan.scanpaths.Schedule`` instances: per-layer scan orders by name,
    e.g. ``Schedule("my-4", ["sweep", "zigzag-s1", "hilbert", "zigzag-s5"])`` (cycled over depth)."""


@hookspec
def zigscan_register_mixers() -> list:
    """Return a list of ``zigscan.backbones.MixerSpec``: a name, the ``nn.Module`` factory
    ``factory(d_model, impl=..., **kwargs)`` of a causal sequence mixer ``[B, L, D] -> [B, L, D]``,
    and a one-line description."""


@hookspec
def zigscan_register_models() -> list:
    """Return a list of ``zigscan.backbones.ModelSpec``: named network presets
    (e.g. ``zigma-B/2``) usable by ``create_model`` and in configs (``model.preset``)."""
