"""Model presets (``zigma-B/2``, ``dit-B/2``, ...): the MODELS registry and ``create_model``.

Owned by the ZigMa-network work (issue 5). Until it lands this holds only the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zigscan.scanpaths.registry import Registry, plugin_loader

__all__ = ["ModelSpec", "MODELS", "builtin_models", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """A named network preset: ``name`` and the keyword arguments of the network it builds."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _spec_type() -> type:
    return ModelSpec


MODELS: Registry = Registry(
    "model preset", list_command="zigscan models list", loader=plugin_loader("zigscan_register_models", _spec_type)
)


def builtin_models() -> list[ModelSpec]:
    return []


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
