"""``mamba2``: the Mamba2 (SSD) mixer.

Parameters, names, shapes and initialisation are those of ``mamba_ssm.modules.mamba2.Mamba2`` (in_proj,
conv1d, dt_bias, A_log, D, norm.weight, out_proj), so state dicts load either way. Two paths:

* kernel: upstream's wiring: ``mamba_split_conv1d_scan_combined`` (``use_mem_eff_path=True``, default),
  else causal-conv1d (or ``self.conv1d``) + ``mamba_chunk_scan_combined`` + gated RMSNorm;
* reference: the same maths in pure PyTorch: ``ssm_ref.causal_conv1d`` (shifted multiply-adds, the
  conv1d's own parameters) and the SSD scan ``ssm_ref.ssd_scan`` (``ssm_ref.ssd_one_chunk``, one [L, L] matrix
  per head, when the sequence is one chunk, L <= ``ssm_ref.SSD_CHUNK``).

Small widths: upstream needs ``d_ssm % headdim == 0`` (headdim 64). When ``d_ssm < headdim`` we use one
head of width ``d_ssm`` (e.g. d_model=16 -> d_inner=32 -> headdim=32); other mismatches raise a
ValueError naming valid head sizes. Not supported (tensor/sequence parallel, inference cache): those are
upstream's serving features, not needed for diffusion training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .modules import (
    MAMBA_INSTALL_HINT,
    MAMBA_PACKAGE,
    MixerConfig,
    RMSNorm,
    causal_conv1d_fn,
    configure,
    dt_bias_init,
    no_weight_decay,
    takes_config,
)
from .registry import MixerSpec
from .ssm_ref import _up, causal_conv1d, ssd_scan

__all__ = ["Mamba2", "Mamba2Config", "SPECS"]

NORM_EPS = 1e-5  # upstream's gated RMSNorm eps
HEADDIM_CHOICES = (8, 16, 32, 64, 128)  # head sizes the error message suggests
NO_DT_LIMIT = (0.0, float("inf"))


@dataclass(frozen=True)
class Mamba2Config(MixerConfig):
    """The options of ``mamba2``: names and defaults of ``mamba_ssm``'s ``Mamba2``."""

    d_state: int = 128
    d_conv: int = 4
    conv_init: float | None = None
    expand: int = 2
    headdim: int = 64
    d_ssm: int | None = None
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1, 16)
    D_has_hdim: bool = False
    rmsnorm: bool = True
    norm_before_gate: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = NO_DT_LIMIT
    bias: bool = False
    conv_bias: bool = True
    chunk_size: int = 256
    use_mem_eff_path: bool = True


@takes_config(Mamba2Config)
class Mamba2(Mixer):
    """Mamba2 mixer over [B, L, D], causal. Arguments and defaults as ``mamba_ssm`` ``Mamba2``."""

    kernel_package = MAMBA_PACKAGE
    install_hint = MAMBA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = Mamba2Config(**config)
        self.d_inner = cfg.expand * d_model
        d_ssm = self.d_inner if cfg.d_ssm is None else cfg.d_ssm
        headdim, ngroups, d_state, A_init_range = cfg.headdim, cfg.ngroups, cfg.d_state, cfg.A_init_range
        if d_ssm < headdim:
            headdim = d_ssm  # one head for tiny widths (documented above)
        if d_ssm % headdim:
            ok = [h for h in HEADDIM_CHOICES if d_ssm % h == 0]
            raise ValueError(
                f"mamba2: d_ssm={d_ssm} (expand*d_model unless d_ssm is given) must be divisible by "
                f"headdim={headdim}; pass headdim= one of {ok} or change d_model"
            )
        if d_ssm % ngroups or (d_ssm // headdim) % ngroups:
            raise ValueError(f"mamba2: ngroups={ngroups} must divide the number of heads {d_ssm // headdim}")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"mamba2: A_init_range must be 0 < lo <= hi, got {A_init_range}")
        cfg = configure(self, replace(  # the resolved options, also as self.d_ssm, self.headdim, ...
            cfg, d_ssm=d_ssm, headdim=headdim, A_init_range=tuple(A_init_range), dt_limit=tuple(cfg.dt_limit)))
        self.nheads = d_ssm // headdim

        # in_proj order: [z, x, B, C, dt] (plus a gated-MLP part [z0, x0] first when d_ssm < d_inner)
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=cfg.bias)
        conv_dim = d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1,
                                bias=cfg.conv_bias)
        if cfg.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -cfg.conv_init, cfg.conv_init)
        # dt bias: softplus(dt_bias) log-uniform in [dt_min, dt_max]
        self.dt_bias = no_weight_decay(nn.Parameter(dt_bias_init(self.nheads, cfg.dt_min, cfg.dt_max,
                                                                 cfg.dt_init_floor)))
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = no_weight_decay(nn.Parameter(torch.log(A)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(d_ssm if cfg.D_has_hdim else self.nheads)))
        if cfg.rmsnorm:  # mamba_ssm's gated RMSNorm: norm(x * silu(z)) unless norm_before_gate
            self.norm = RMSNorm(d_ssm, eps=NORM_EPS, activation="silu", gate_first=not cfg.norm_before_gate,
                                group_size=d_ssm // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.bias)

    # ------------------------------------------------------------------ helpers
    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _split(self, zxbcdt: torch.Tensor):
        d_mlp, sizes = self._split_sizes(zxbcdt.shape[-1])
        return d_mlp, torch.split(zxbcdt, sizes, dim=-1)

    def _in_proj_parts(self, u: torch.Tensor):
        """``_split(self.in_proj(u))`` as one product per part (the rows of ``in_proj.weight`` split as its
        output would be): each part comes out contiguous, so the convolution and the gate read plain
        [B, L, d] tensors, and the backward sums the parts' input gradients instead of concatenating
        one [B, L, d_in_proj] gradient."""
        _, sizes = self._split_sizes(self.in_proj.out_features)
        ws = torch.split(self.in_proj.weight, sizes, dim=0)
        bs = torch.split(self.in_proj.bias, sizes, dim=0) if self.in_proj.bias is not None else (None,) * len(sizes)
        return sizes[0], tuple(F.linear(u, w, b) for w, b in zip(ws, bs))

    def _split_sizes(self, d_in_proj: int):
        d_mlp = (d_in_proj - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        return d_mlp, [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads]

    # ------------------------------------------------------------------ paths
    def forward_reference(self, u: torch.Tensor) -> torch.Tensor:
        d_mlp, (z0, x0, z, xBC, dt) = self._in_proj_parts(u)  # (B, L, .) each
        xBC = causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias, silu=True)  # (B, L, d_ssm + 2*g*n)
        x, Bm, Cm = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt = F.softplus(_up(dt) + _up(self.dt_bias))  # (B, L, h)
        if self.dt_limit != NO_DT_LIMIT:
            dt = dt.clamp(*self.dt_limit)
        A = -torch.exp(_up(self.A_log))  # (h,)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (B, L, h, p)
        Bm, Cm = (t.unflatten(-1, (self.ngroups, self.d_state)) for t in (Bm, Cm))  # (B, L, g, n)
        y = ssd_scan(x, dt, A, Bm, Cm, D=self._D()).flatten(-2)  # (B, L, d_ssm)
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
        dt_limit_kwargs = {} if self.dt_limit == NO_DT_LIMIT else dict(dt_limit=self.dt_limit)
        if self.use_mem_eff_path and causal_conv1d_fn() is not None:  # the fused path needs causal-conv1d
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
        conv_fn = causal_conv1d_fn()
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

        return UpstreamMamba2(self.d_model, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec("mamba2", Mamba2, "Mamba2 / SSD (mamba_ssm Mamba2), causal", kernel_package=MAMBA_PACKAGE),
]
