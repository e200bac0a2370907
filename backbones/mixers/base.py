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

The choice is made once per (device type, grad mode) and kept in a plain attribute, ``_kernel_for``: when the
mixer is moved (``.to()`` / ``.cuda()``, through ``_apply``) or, failing that, at its first call on a device.
``forward`` itself only reads that dict, so a compiled model sees no import, no logging and no
``kernel_available()`` there (no graph break).
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
        self._kernel_for: dict[tuple[str, bool], bool] = {}  # (device type, grad enabled) -> take the kernel?
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
        """Whether this call takes the kernel path: the cached choice for ``x``'s device type and the grad mode,
        decided (and logged once per class and reason) on the first call that finds none."""
        use = self._kernel_for.get((x.device.type, torch.is_grad_enabled()))
        if use is None:
            use = self._decide(x)
        return use

    @torch.compiler.disable
    def _decide(self, x: torch.Tensor) -> bool:
        """Decide the path for ``x``'s device type and the current grad mode, log it once, cache it.
        ``impl="kernel"`` raises here (clear message) when the kernel cannot run; nothing is cached then."""
        if self.impl == "reference":
            choice, reason = False, "impl='reference'"
        elif self.impl == "kernel":
            self._require_kernel(x)
            unverified = self.kernel_unverified()
            choice, reason = True, "impl='kernel'" + (f"; note: {unverified}" if unverified else "")
        else:
            choice, reason = self._decide_auto(x)
        if choice:
            self.prepare_kernel()
        key = (type(self).__name__, str(choice), reason)
        if key not in _logged:
            _logged.add(key)
            path = f"{self.kernel_package} kernel" if choice else "pure-PyTorch reference"
            # falling back to the reference on a GPU is a large slow-down: say it loudly
            level = logging.WARNING if (x.is_cuda and not choice and self.kernel_package) else logging.INFO
            hint = f"; install with: {self.install_hint}" if level == logging.WARNING and self.install_hint else ""
            if level == logging.WARNING and self.impl == "auto" and reason == self.kernel_unverified():
                hint = "; to run the kernel anyway use impl='kernel' (config: --set model.impl=kernel)"
            log.log(level, "%s: using the %s (%s)%s", type(self).__name__, path, reason, hint)
        self._kernel_for[(x.device.type, torch.is_grad_enabled())] = choice
        return choice

    def kernel_unverified(self) -> str | None:
        """Why this mixer's kernel path has no GPU verification on record (``impl="auto"`` then runs the
        reference, with one WARNING), or None when it is verified. The record: ``verification.py``."""
        from .verification import unverified_reason  # lazy: verification looks mixers up in the registry

        return unverified_reason(self)

    def _decide_auto(self, x: torch.Tensor) -> tuple[bool, str]:
        """``impl="auto"``: (take the kernel?, why). One condition per line; the first that says no decides."""
        if self.kernel_package is None:
            return False, "no kernel exists for this mixer"
        if not x.is_cuda:
            return False, f"input on {x.device.type}"
        ok, why = kernel_available(self.kernel_package)
        if not ok:
            return False, f"{self.kernel_package} unavailable ({why})"
        blocked = self.kernel_blocked(x)
        if blocked:
            return False, blocked
        unverified = self.kernel_unverified()
        if unverified:
            return False, unverified
        return True, "CUDA input"

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """After ``.to()`` / ``.cuda()`` / ``.half()``: forget the cached choices and decide again for the device
        the parameters are on now (both grad modes), so the first call, compiled or not, only reads the cache."""
        out = super()._apply(fn, recurse)
        self._kernel_for = {}
        p = next(self.parameters(), None)
        if p is not None and p.device.type != "meta":
            probe = p.new_empty(0)
            for grad in (True, False):
                with torch.set_grad_enabled(grad):
                    try:
                        self._decide(probe)
                    except KernelUnavailableError:  # impl="kernel" off CUDA: raised again at the call
                        pass
        return out

    def prepare_kernel(self) -> None:
        """Called once when the kernel path is chosen (outside any compiled region): resolve the kernel's own
        options here (Mamba: whether causal-conv1d's fused path is there), not in ``forward_kernel``."""

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
