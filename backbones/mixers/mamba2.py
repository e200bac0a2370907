"""``mamba2``: the Mamba2 (SSD) mixer.

Parameters, names, shapes and initialisation are those of ``mamba_ssm.modules.mamba2.Mamba2`` (in_proj,
conv1d, dt_bias, A_log, D, norm.weight, out_proj), so state dicts load either way. Two paths:

* kernel: upstream's wiring: ``mamba_split_conv1d_scan_combined`` (``use_mem_eff_path=True``, default),
  else causal-conv1d (or ``self.conv1d``) + ``mamba_chunk_scan_combined`` + gated RMSNorm;
* reference: the same maths in pure PyTorch with the SSD chunked scan of ``ssm_ref.ssd_scan``.

Small widths: upstream needs ``d_ssm % headdim == 0`` (headdim 64). When ``d_ssm < headdim`` we use one
head of width ``d_ssm`` (e.g. d_model=16 -> d_inner=32 -> headdim=32); other mismatches raise a
ValueError naming valid head sizes. Not supported (tensor/sequence parallel, inference cache): those are
upstream's serving features, not needed for diffusion training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .mamba import MAMBA_INSTALL_HINT, _causal_conv1d_fn
from .registry import MixerSpec
from .ssm_ref import _up, ssd_scan

__all__ = ["Mamba2", "GatedRMSNorm"]


class GatedRMSNorm(nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.RMSNorm`` in PyTorch: norm(x * silu(z)) (or norm(x) * silu(z)
    with ``norm_before_gate``), RMS over groups of ``group_size`` channels. Parameter: ``weight``."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True) -> None:
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = _up(x)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(_up(z))
        gs = self.group_size or x.shape[-1]
        xg = x.unflatten(-1, (-1, gs))  # (..., groups, gs)
        out = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)).flatten(-2) * _up(self.weight)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(_up(z))
        return out.to(dtype)


class Mamba2(Mixer):
    """Mamba2 mixer over [B, L, D], causal. Arguments and defaults as ``mamba_ssm`` ``Mamba2``."""

    kernel_package = "mamba_ssm"
    install_hint = MAMBA_INSTALL_HINT

    def __init__(
        self,
        d_model: int,
        impl: Impl = "auto",
        *,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        use_mem_eff_path: bool = True,
    ) -> None:
        super().__init__(d_model, impl)
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm < headdim:
            headdim = self.d_ssm  # one head for tiny widths (documented above)
        if self.d_ssm % headdim:
            ok = [h for h in (8, 16, 32, 64, 128) if self.d_ssm % h == 0]
            raise ValueError(
                f"mamba2: d_ssm={self.d_ssm} (expand*d_model unless d_ssm is given) must be divisible by "
                f"headdim={headdim}; pass headdim= one of {ok} or change d_model"
            )
        if self.d_ssm % ngroups or (self.d_ssm // headdim) % ngroups:
            raise ValueError(f"mamba2: ngroups={ngroups} must divide the number of heads {self.d_ssm // headdim}")
        self.d_state, self.d_conv, self.expand, self.headdim, self.ngroups = d_state, d_conv, expand, headdim, ngroups
        self.nheads = self.d_ssm // headdim
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size, self.use_mem_eff_path = chunk_size, use_mem_eff_path
        self.config = dict(
            d_state=d_state, d_conv=d_conv, conv_init=conv_init, expand=expand, headdim=headdim, d_ssm=d_ssm,
            ngroups=ngroups, A_init_range=tuple(A_init_range), D_has_hdim=D_has_hdim, rmsnorm=rmsnorm,
            norm_before_gate=norm_before_gate, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
            dt_limit=self.dt_limit, bias=bias, conv_bias=conv_bias, chunk_size=chunk_size,
            use_mem_eff_path=use_mem_eff_path,
        )

        # in_proj order: [z, x, B, C, dt] (plus a gated-MLP part [z0, x0] first when d_ssm < d_inner)
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        # dt bias: softplus(dt_bias) log-uniform in [dt_min, dt_max]
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"mamba2: A_init_range must be 0 < lo <= hi, got {A_init_range}")
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = GatedRMSNorm(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    # ------------------------------------------------------------------ helpers
    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _split(self, zxbcdt: torch.Tensor):
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        sizes = [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads]
        return d_mlp, torch.split(zxbcdt, sizes, dim=-1)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, u: torch.Tensor) -> torch.Tensor:
        B_, L, _ = u.shape
        d_mlp, (z0, x0, z, xBC, dt) = self._split(self.in_proj(u))  # (B, L, .)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))  # (B, L, d_ssm + 2*g*n)
        x, Bm, Cm = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt = F.softplus(_up(dt) + _up(self.dt_bias))  # (B, L, h)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        A = -torch.exp(_up(self.A_log))  # (h,)
        y = ssd_scan(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, A,
            Bm.unflatten(-1, (self.ngroups, self.d_state)), Cm.unflatten(-1, (self.ngroups, self.d_state)),
            D=self._D(),
        ).flatten(-2)  # (B, L, d_ssm)
        if self.rmsnorm:
            y = self.norm(y, z)
        else:
            y = (_up(y) * F.silu(_up(z))).to(y.dtype)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)  # (B, L, d_inner)
        return self.out_proj(y)  # (B, L, D)

    def forward_kernel(self, u: torch.Tensor) -> torch.Tensor:
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )

        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        A = -torch.exp(self.A_log.float())
        dt_limit_kwargs = {} if self.dt_limit == (0.0, float("inf")) else dict(dt_limit=self.dt_limit)
        if self.use_mem_eff_path and _causal_conv1d_fn() is not None:  # the fused path needs causal-conv1d
            return mamba_split_conv1d_scan_combined(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, D=self._D(),
                chunk_size=self.chunk_size, seq_idx=None, activation="silu",
                rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
                rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
                outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias,
                headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
                norm_before_gate=self.norm_before_gate, **dt_limit_kwargs,
            )  # (B, L, D)
        L = u.shape[1]
        d_mlp, (z0, x0, z, xBC, dt) = self._split(zxbcdt)
        conv_fn = _causal_conv1d_fn()
        if conv_fn is None:
            xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
        else:
            xBC = conv_fn(xBC.transpose(1, 2), self.conv1d.weight.squeeze(1), bias=self.conv1d.bias,
                          activation="silu").transpose(1, 2)
        x, Bm, Cm = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        y = mamba_chunk_scan_combined(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, A,
            Bm.unflatten(-1, (self.ngroups, self.d_state)), Cm.unflatten(-1, (self.ngroups, self.d_state)),
            chunk_size=self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias, dt_softplus=True, **dt_limit_kwargs,
        ).flatten(-2)  # (B, L, d_ssm)
        if self.rmsnorm:
            from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

            y = rmsnorm_fn(y, self.norm.weight, None, z=z, eps=self.norm.eps, group_size=self.norm.group_size,
                           norm_before_gate=self.norm_before_gate)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def build_upstream(self) -> nn.Module:
        """The upstream ``mamba_ssm`` Mamba2 with this configuration (load our state dict into it)."""
        from mamba_ssm.modules.mamba2 import Mamba2 as UpstreamMamba2

        return UpstreamMamba2(self.d_model, **self.config)


SPECS = [
    MixerSpec("mamba2", Mamba2, "Mamba2 / SSD (mamba_ssm Mamba2), causal", kernel_package="mamba_ssm"),
]
