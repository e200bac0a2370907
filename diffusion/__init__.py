"""zigscan.diffusion: stochastic interpolants, samplers, the builder, the trainer, data and metrics.

Names below are imported lazily (on first attribute access), so ``import zigscan.diffusion`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY = {
    # interpolants.py: paths
    "Path": "interpolants",
    "PATHS": "interpolants",
    "get_path": "interpolants",
    "register_path": "interpolants",
    # transport.py: losses, predictions, conversions, time sampling
    "Transport": "transport",
    "PREDICTIONS": "transport",
    "LOSS_WEIGHTS": "transport",
    "TIME_SAMPLINGS": "transport",
    "DIFFUSION_FORMS": "transport",
    # samplers.py: ODE/SDE integrators, classifier-free guidance
    "SampleResult": "samplers",
    "SAMPLING_METHODS": "samplers",
    "sample": "samplers",
    "sample_ode": "samplers",
    "sample_sde": "samplers",
    "guided_model_fn": "samplers",
    # builder.py: every config -> object step, and checkpoint -> run (train, sample and eval share it)
    "Run": "builder",
    "build_model": "builder",
    "build_transport": "builder",
    "load_run": "builder",
    # data.py: the typed data description saved with every checkpoint
    "DataInfo": "data",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
