"""``mamba``: the Mamba (v1) selective-state-space mixer used by ZigMa.

Parameters, their names, shapes and initialisation are those of ``mamba_ssm.modules.mamba_simple.Mamba``
(in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so state dicts load either way. Two paths:

* kernel: mamba_ssm's CUDA kernels with upstream's wiring, through the ``torch.library`` custom ops of
  ``mamba_ops`` (so ``torch.compile`` traces the layer): ``mamba_inner`` (upstream's ``mamba_inner_fn``) when
  causal-conv1d is installed, else ``self.conv1d`` + ``selective_scan`` (upstream's slow path without
  inference cache). Which of the two is decided once, when the kernel path is chosen (``prepare_kernel``);
* reference: the same maths in pure PyTorch, with the chunked scan of ``ssm_ref.selective_scan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import mamba_ops as ops
from .base import Impl, Mixer
from .modules import (
    MAMBA_INSTALL_HINT,
    MAMBA_PACKAGE,
    MixerConfig,
    configure,
    dt_bias_init,
    no_weight_decay,
    takes_config,
)
from .modules import causal_conv1d_fn as _causal_conv1d_fn
from .registry import MixerSpec
from .ssm_ref import _up, causal_conv1d, selective_scan

__all__ = ["Mamba", "MambaConfig", "MambaCoreConfig", "MAMBA_INSTALL_HINT", "init_core", "core_reference",
           "core_kernel"]

DT_RANK_DIVISOR = 16  # upstream's dt_rank="auto": ceil(d_model / 16)


@dataclass(frozen=True)
class MambaCoreConfig(MixerConfig):
    """The options of one Mamba SSM core (``mamba``, ``bimamba``, ``parallel-K``): names and defaults of
    ``mamba_ssm``'s ``Mamba``. ``dt_rank="auto"`` is ``ceil(d_model / 16)``."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: Literal["random", "constant"] = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    def resolved(self, d_model: int) -> MambaCoreConfig:
        """This config with ``dt_rank`` as the int upstream derives from ``"auto"``."""
        return replace(self, dt_rank=math.ceil(d_model / DT_RANK_DIVISOR) if self.dt_rank == "auto" else int(self.dt_rank))


@dataclass(frozen=True)
class MambaConfig(MambaCoreConfig):
    """The options of ``mamba``: the core's, and upstream's ``use_fast_path`` (fused kernel when possible)."""

    use_fast_path: bool = True


def init_core(mod: nn.Module, suffix: str, d_inner: int, cfg: MambaCoreConfig) -> None:
    """Create conv1d{suffix}, x_proj{suffix}, dt_proj{suffix}, A{suffix}_log, D{suffix} on ``mod`` with
    upstream's initialisation (``A_log`` / ``A_b_log`` naming as in mamba_ssm and Vision Mamba)."""
    d_conv, d_state, dt_rank = cfg.d_conv, cfg.d_state, cfg.dt_rank  # dt_rank: resolved (an int)
    conv = nn.Conv1d(d_inner, d_inner, kernel_size=d_conv, groups=d_inner, padding=d_conv - 1, bias=cfg.conv_bias)
    x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
    dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
    # dt projection initialised to preserve variance (upstream)
    dt_init_std = dt_rank**-0.5 * cfg.dt_scale
    if cfg.dt_init == "constant":
        nn.init.constant_(dt_proj.weight, dt_init_std)
    elif cfg.dt_init == "random":
        nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
    else:
        raise ValueError(f"mamba: dt_init must be 'random' or 'constant', got {cfg.dt_init!r}")
    with torch.no_grad():  # dt bias such that softplus(bias) is log-uniform in [dt_min, dt_max]
        dt_proj.bias.copy_(dt_bias_init(d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
    dt_proj.bias._no_reinit = True
    # S4D real initialisation, kept in fp32
    A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, d_state)
    A_log = no_weight_decay(nn.Parameter(torch.log(A)))
    D = no_weight_decay(nn.Parameter(torch.ones(d_inner)))
    setattr(mod, f"conv1d{suffix}", conv)
    setattr(mod, f"x_proj{suffix}", x_proj)
    setattr(mod, f"dt_proj{suffix}", dt_proj)
    setattr(mod, f"A{suffix}_log", A_log)
    setattr(mod, f"D{suffix}", D)


def core_reference(mod: nn.Module, suffix: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Upstream's slow path up to (excluding) out_proj, pure PyTorch. x, z: (B, L, d_inner) -> (B, L, d_inner)."""
    conv, x_proj, dt_proj = (getattr(mod, f"{n}{suffix}") for n in ("conv1d", "x_proj", "dt_proj"))
    A = -torch.exp(_up(getattr(mod, f"A{suffix}_log")))  # (d_inner, d_state); fp32 (fp64 in tests)
    x = causal_conv1d(x, conv.weight, conv.bias, silu=True)  # (B, L, d_inner): conv1d's maths, faster on a CPU
    dt, B, C = torch.split(x_proj(x), [mod.dt_rank, mod.d_state, mod.d_state], dim=-1)  # (B, L, r/n/n)
    dt = F.linear(dt, dt_proj.weight)  # (B, L, d_inner); the bias goes in as delta_bias (fp32)
    return selective_scan(
        x, dt, A, B, C, _up(getattr(mod, f"D{suffix}")), z=z, delta_bias=_up(dt_proj.bias), delta_softplus=True,
    )  # (B, L, d_inner)


def core_kernel(mod: nn.Module, suffix: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Upstream's non-fused path with mamba_ssm's CUDA scan (as ``torch.ops.zigscan`` custom ops, see
    mamba_ops). x, z: (B, d_inner, L) -> (B, d_inner, L). The conv is causal-conv1d's kernel when
    ``mod._fused_conv`` (decided once, ``fused_conv_available``), else PyTorch's conv1d."""
    conv, x_proj, dt_proj = (getattr(mod, f"{n}{suffix}") for n in ("conv1d", "x_proj", "dt_proj"))
    A = -torch.exp(getattr(mod, f"A{suffix}_log").float())
    L = x.shape[-1]
    if _fused_conv(mod):
        x = ops.causal_conv1d(x, conv.weight.squeeze(1), conv.bias, activation="silu")
    else:
        x = F.silu(conv(x)[..., :L])
    x_dbl = x_proj(x.transpose(1, 2).reshape(-1, x.shape[1]))  # (B*L, r + 2n)
    dt, B, C = torch.split(x_dbl, [mod.dt_rank, mod.d_state, mod.d_state], dim=-1)
    dt = (dt_proj.weight.to(dt.dtype) @ dt.t()).view(-1, x.shape[0], L).transpose(0, 1)  # (B, d_inner, L)
    B = B.view(x.shape[0], L, -1).transpose(1, 2).contiguous()  # (B, n, L)
    C = C.view(x.shape[0], L, -1).transpose(1, 2).contiguous()  # (B, n, L)
    return ops.selective_scan(
        x, dt, A, B, C, getattr(mod, f"D{suffix}").float(), z.to(x.dtype), dt_proj.bias.float(), delta_softplus=True,
    )  # (B, d_inner, L)


def fused_conv_available() -> bool:
    """Whether causal-conv1d's kernel can be used (the probe; ``bench_speed --no-fused-conv`` replaces it)."""
    return _causal_conv1d_fn() is not None


def _fused_conv(mod: nn.Module) -> bool:
    """The conv decision cached on ``mod`` (set by ``prepare_kernel`` when the kernel path is chosen)."""
    fused = getattr(mod, "_fused_conv", None)
    if fused is None:
        fused = decide_fused_conv(mod)
    return fused


@torch.compiler.disable
def decide_fused_conv(mod: nn.Module) -> bool:
    mod._fused_conv = fused = getattr(mod, "use_fast_path", True) and fused_conv_available()
    return fused


# ---------------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------------


@takes_config(MambaConfig)
class Mamba(Mixer):
    """Mamba v1 mixer over [B, L, D], causal. Arguments and defaults as ``mamba_ssm`` ``Mamba``."""

    kernel_package = MAMBA_PACKAGE
    install_hint = MAMBA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, MambaConfig(**config).resolved(d_model))  # also sets self.d_state, self.dt_rank, ...
        self.d_inner = int(cfg.expand * d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=cfg.bias)
        init_core(self, "", self.d_inner, cfg)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.bias)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d_inner) each
        y = core_reference(self, "", xi, z)  # (B, L, d_inner)
        return self.out_proj(y)  # (B, L, D)

    def prepare_kernel(self) -> None:
        self._fused_conv = None
        decide_fused_conv(self)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        # upstream: matmul and transpose BLD -> BDL at once
        xz = (self.in_proj.weight @ x.reshape(-1, self.d_model).t()).view(-1, x.shape[0], L).transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype).unsqueeze(-1)  # (B, 2*d_inner, L)
        if _fused_conv(self):
            return ops.mamba_inner(
                xz, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, -torch.exp(self.A_log.float()), self.D.float(),
                self.dt_proj.bias.float(),
            )  # (B, L, D)
        xi, z = xz.chunk(2, dim=1)  # (B, d_inner, L)
        y = core_kernel(self, "", xi, z)  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)

    def build_upstream(self) -> nn.Module:
        """The upstream ``mamba_ssm`` layer with this configuration (load our state dict into it)."""
        from mamba_ssm.modules.mamba_simple import Mamba as UpstreamMamba

        return UpstreamMamba(self.d_model, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec("mamba", Mamba, "Mamba v1 selective SSM (mamba_ssm Mamba), causal; the ZigMa mixer",
              kernel_package=MAMBA_PACKAGE),
]
