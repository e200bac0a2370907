"""Interpolant paths: the coefficients alpha_t, sigma_t of x_t = alpha_t * x1 + sigma_t * x0 and their
time derivatives, nothing else (SiT's split: paths here, losses and conversions in ``transport.py``,
integrators in ``samplers.py``).

Conventions (fixed for all of zigscan.diffusion):

* x0 ~ N(0, I) is noise, x1 is data, t in [0, 1]; t = 0 is (close to) noise, t = 1 is data;
  sampling integrates from t = 0 to t = 1.
* A path is a small object with four methods of a time tensor ``t`` (any shape, any float dtype):
  ``alpha(t)``, ``sigma(t)``, ``d_alpha(t)``, ``d_sigma(t)``. A new path subclasses ``Path``,
  overrides exactly these four, and registers itself with ``register_path``.

Built-in paths (``PATHS`` is the registry; ``list(PATHS)`` gives the names):

=========  =========================  ============================  ==================================
name       alpha_t                    sigma_t                       singular points
=========  =========================  ============================  ==================================
linear     t                          1 - t                         none (alpha_0 = 0, sigma_1 = 0)
gvp        sin(pi t / 2)              cos(pi t / 2)                 none (alpha_0 = 0, sigma_1 = 0)
vp         exp(-B(1 - t) / 2)         sqrt(1 - alpha_t^2)           d_sigma -> -inf as t -> 1
=========  =========================  ============================  ==================================

VP is the variance-preserving SDE of Song et al. with beta(s) = beta_min + s (beta_max - beta_min),
beta_min = 0.1, beta_max = 20, in SiT's parametrisation (``VPCPlan``) with the time reversed into our
direction: s = 1 - t is the VP-SDE's diffusion time, B(s) = int_0^s beta = beta_min s +
(beta_max - beta_min) s^2 / 2, so log alpha_t = -(beta_max - beta_min) (1 - t)^2 / 4 - beta_min (1 - t) / 2.
At t = 0, alpha_0 = exp(-5.025) ~ 6.6e-3 (not exactly 0: the start is noise up to a 0.7 % data
component, as in SiT); at t = 1, alpha = 1, sigma = 0, and d_sigma diverges like -1/sqrt(1 - t), so
VP is always used on [0, 1 - eps] (``Transport`` does this).
"""

from __future__ import annotations

import math

import torch

from zigscan.scanpaths.registries import Registry

__all__ = ["Path", "LinearPath", "GVPPath", "VPPath", "PATHS", "get_path", "register_path"]


# ---------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------


class Path:
    """alpha_t, sigma_t and their time derivatives. Subclasses override exactly these four methods.

    Every method takes a float tensor ``t`` of any shape and returns a tensor of the same shape and dtype.
    """

    name: str = "path"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, d_alpha, d_sigma) at ``t``, each shaped like ``t``."""
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------------------------------------
# Built-in paths
# ---------------------------------------------------------------------------------------------------


class LinearPath(Path):
    """alpha = t, sigma = 1 - t (rectified flow / SiT "Linear")."""

    name = "linear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)


class GVPPath(Path):
    """alpha = sin(pi t / 2), sigma = cos(pi t / 2) (SiT "GVP": alpha^2 + sigma^2 = 1)."""

    name = "gvp"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class VPPath(Path):
    """Variance preserving (Song et al.'s VP-SDE, SiT's ``VPCPlan``) in our time direction; see the
    module docstring. ``alpha^2 + sigma^2 = 1``; d_sigma diverges at t = 1."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VPPath expects 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        s = 1 - t  # VP-SDE diffusion time
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 - t) * (self.beta_max - self.beta_min) + 0.5 * self.beta_min

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))  # sqrt(1 - alpha^2), accurate near t = 1

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha(t) * self._d_log_alpha(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        # d/dt sqrt(1 - alpha^2) = -alpha * d_alpha / sigma = -alpha^2 * dlog(alpha) / sigma
        return -torch.exp(2 * self._log_alpha(t)) * self._d_log_alpha(t) / self.sigma(t)

    def __repr__(self) -> str:
        return f"VPPath(beta_min={self.beta_min}, beta_max={self.beta_max})"


# ---------------------------------------------------------------------------------------------------
# Registry: the only source of path names (configs and the CLI validate against it)
# ---------------------------------------------------------------------------------------------------

def _load_builtin_paths(registry: Registry) -> None:
    for cls in (LinearPath, GVPPath, VPPath):
        registry.register(cls.name, cls, source="zigscan")


PATHS: Registry[type[Path]] = Registry(
    "interpolant path",
    list_command='python -c "from zigscan.diffusion.interpolants import PATHS; print(list(PATHS))"',
    loader=_load_builtin_paths,
)


def register_path(name: str, cls: type[Path], *, override: bool = False) -> type[Path]:
    """Make ``cls`` (a ``Path`` subclass constructible without arguments) available as ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Path)):
        raise TypeError(f"register_path expects a subclass of zigscan.diffusion.interpolants.Path, got {cls!r}")
    PATHS.ensure_loaded()
    return PATHS.register(name, cls, source="user", override=override)


def get_path(name: str | Path) -> Path:
    """The path called ``name`` (a ``Path`` instance passes through). Unknown names raise
    ``UnknownNameError`` listing the close matches."""
    if isinstance(name, Path):
        return name
    return PATHS.get(name)()
