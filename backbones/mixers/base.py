"""``Mixer``: the one interface of every sequence mixer, ``[B, L, D] -> [B, L, D]``, causal along L.

A mixer owns its parameters once and has two forward paths over them:

* ``forward_kernel``: the fast path through an optional package (mamba-ssm, flash-linear-attention);
* ``forward_reference``: pure PyTorch, vectorized (chunked / parallel scans), runs anywhere.

Both paths read the same parameters, so state dicts are identical whichever path runs: weights trained
on a GPU load on a CPU and give the same outputs (up to kernel precision). Parameter names follow the
upstream layer (``mamba_ssm.Mamba``, ``fla.layers.GatedLinearAttention``, ...), so an upstream state dict
loads too.

``impl``: ``"auto"`` takes the kernel when its package imports, the input is on CUDA and the kernel path is
verified on a GPU (``verification.KERNEL_CHECKS``), else the reference (the choice is logged once per mixer
class and path); ``"kernel"`` insists (clear error with the install command if impossible; it also runs an
unverified kernel); ``"reference"`` always takes the reference.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from typing import ClassVar, Literal

import torch
from torch import nn

__all__ = ["Mixer", "Impl", "kernel_available", "KernelUnavailableError", "fla_hopper_gated_bwd_bug"]

Impl = Literal["auto", "kernel", "reference"]
IMPLS: tuple[str, ...] = ("auto", "kernel", "reference")

log = logging.getLogger("zigscan.mixers")
_logged: set[tuple[str, str, str]] = set()


class KernelUnavailableError(RuntimeError):
    """``impl="kernel"`` was asked for but the kernel cannot run here."""


@cache
def kernel_available(package: str) -> tuple[bool, str]:
    """(True, "") if ``package`` imports, else (False, reason). Cached: imports are tried once."""
    try:
        importlib.import_module(package)
        return True, ""
    except Exception as exc:  # ImportError, missing compiled extension, missing triton, ...
        return False, f"{type(exc).__name__}: {exc}"


def fla_hopper_gated_bwd_bug(x: torch.Tensor, *, capability: tuple[int, int] | None = None,
                             triton_version: str | None = None, tilelang: bool | None = None) -> str | None:
    """Why fla 0.6.0's gated chunk kernels must not train on ``x`` here, or None.

    On Hopper GPUs (sm_90) Triton >= 3.4.0 and < 3.7.1 miscompiles fla's gated ``chunk_bwd_dqkwg``
    (wrong gradients, fla issue #640); fla then raises in the backward pass unless tilelang is
    installed. The forward pass is right, so only calls that record gradients are refused: sampling
    (``torch.no_grad``) keeps the kernel. Used by ``simple-gla`` and ``gated-deltanet``. The keyword
    arguments override what is detected (for tests).
    """
    if not torch.is_grad_enabled() or (x is not None and not x.is_cuda and capability is None):
        return None
    try:
        from packaging.version import Version

        if capability is None:
            capability = torch.cuda.get_device_capability(x.device)
        if triton_version is None:
            import triton

            triton_version = triton.__version__
        bad = capability[0] == 9 and Version("3.4.0") <= Version(triton_version.split("+")[0]) < Version("3.7.1")
    except Exception:  # no triton / unparsable version: let fla decide
        return None
    if tilelang is None:
        tilelang = kernel_available("tilelang")[0]
    if bad and not tilelang:
        return (f"Triton {triton_version} on a Hopper GPU gives wrong gradients in fla's gated chunk kernels "
                "(fla issue #640); upgrade Triton to >= 3.7.1 or `pip install tilelang`")
    return None


class Mixer(nn.Module):
    """Base class of every mixer. Subclasses set ``kernel_package`` / ``install_hint`` and implement
    ``forward_reference`` (and ``forward_kernel`` when a kernel exists)."""

    kernel_package: ClassVar[str | None] = None  # module to import for the fast path, e.g. "mamba_ssm"
    install_hint: ClassVar[str] = ""  # e.g. "pip install 'zigscan[mamba]'"

    def __init__(self, d_model: int, impl: Impl = "auto") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.impl = impl
        if impl == "kernel":
            self._require_kernel(None)

    # ------------------------------------------------------------------ dispatch
    def _require_kernel(self, x: torch.Tensor | None) -> None:
        name = type(self).__name__
        if self.kernel_package is None:
            raise KernelUnavailableError(f"{name} has no fast kernel; use impl='reference' or 'auto'.")
        ok, why = kernel_available(self.kernel_package)
        if not ok:
            raise KernelUnavailableError(
                f"{name}: impl='kernel' needs the package {self.kernel_package!r}, which does not import "
                f"({why}). Install it with: {self.install_hint or 'pip install ' + self.kernel_package}; "
                "or use impl='auto' to fall back to the pure-PyTorch reference."
            )
        blocked = self.kernel_blocked(x) if x is not None else None
        if blocked:
            raise KernelUnavailableError(f"{name}: impl='kernel' cannot run here: {blocked}")
        if x is not None and not x.is_cuda:
            raise KernelUnavailableError(
                f"{name}: impl='kernel' runs on CUDA tensors only, got a tensor on {x.device}. "
                "Move the model to a GPU or use impl='auto'/'reference'."
            )

    def use_kernel(self, x: torch.Tensor) -> bool:
        """Whether this call takes the kernel path (logs the choice once per class and reason)."""
        unverified: str | None = None
        if self.impl == "reference":
            choice, reason = False, "impl='reference'"
        elif self.impl == "kernel":
            self._require_kernel(x)
            unverified = self.kernel_unverified()
            choice, reason = True, "impl='kernel'" + (f"; note: {unverified}" if unverified else "")
        elif self.kernel_package is None:
            choice, reason = False, "no kernel exists for this mixer"
        elif not x.is_cuda:
            choice, reason = False, f"input on {x.device.type}"
        else:
            ok, why = kernel_available(self.kernel_package)
            blocked = self.kernel_blocked(x) if ok else None
            unverified = self.kernel_unverified() if ok and not blocked else None
            choice = ok and not blocked and not unverified
            reason = "CUDA input" if choice else (blocked or unverified or f"{self.kernel_package} unavailable ({why})")
        key = (type(self).__name__, str(choice), reason)
        if key not in _logged:
            _logged.add(key)
            path = f"{self.kernel_package} kernel" if choice else "pure-PyTorch reference"
            # falling back to the reference on a GPU is a large slow-down: say it loudly
            level = logging.WARNING if (x.is_cuda and not choice and self.kernel_package) else logging.INFO
            hint = f"; install with: {self.install_hint}" if level == logging.WARNING and self.install_hint else ""
            if not choice and unverified and reason == unverified:
                hint = "; to run the kernel anyway use impl='kernel' (config: --set model.impl=kernel)"
            log.log(level, "%s: using the %s (%s)%s", type(self).__name__, path, reason, hint)
        return choice

    def kernel_unverified(self) -> str | None:
        """Why this mixer's kernel path has no GPU verification on record (``impl="auto"`` then runs the
        reference, with one WARNING), or None when it is verified. The record: ``verification.py``."""
        from .verification import unverified_reason  # lazy: verification looks mixers up in the registry

        return unverified_reason(self)

    def kernel_blocked(self, x: torch.Tensor) -> str | None:
        """A reason why the installed kernel must not run on ``x`` (a known upstream bug on this
        GPU / version, say), or None. ``auto`` then falls back to the reference, loudly."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects input [B, L, {self.d_model}], got {tuple(x.shape)}"
            )
        if self.use_kernel(x):
            return self.forward_kernel(x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
