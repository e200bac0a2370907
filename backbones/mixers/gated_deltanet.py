"""``gated-deltanet``: Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks").

One module, the parameters of ``fla.layers.GatedDeltaNet`` (flash-linear-attention 0.6.0), so state dicts
load both ways (``build_upstream`` gives the fla layer with the same configuration). Configuration: the
upstream layer defaults (``expand_v=2``, output gate with swish, short convolutions of size 4 without bias,
L2-normalised q/k, sigmoid beta, eps 1e-5), except the width, which upstream fixes at ``head_dim=256,
num_heads=6`` for ``hidden_size=2048``. Here ``head_dim=64`` and, as upstream's docstring prescribes for
``use_gate=True`` (``num_heads * head_dim = 0.75 * hidden_size``, about 6 d_model^2 parameters),
``num_heads = max(1, round(0.75 * d_model / head_dim))``. Both are keyword arguments.

Per value head, with S: [K, V], L2-normalised q, k (scale K ** -0.5) and
``g_t = -exp(A_log) * softplus(a_proj(x)_t + dt_bias)``::

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

* ``forward_kernel``: fla's ``causal_conv1d`` and ``chunk_gated_delta_rule`` (gate, sigmoid and L2 norm in
  the kernel; ``fused_recurrent_gated_delta_rule`` for short no-grad eval calls, as upstream);
* ``forward_reference``: the same wiring over ``delta_rule_ref.delta_rule_chunked`` (WY/UT chunks, decays
  formed pairwise from cumulative log gates, so no overflow whatever the gate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer, fla_hopper_gated_bwd_bug
from .delta_rule_ref import delta_rule_chunked
from .modules import (
    FLA_INSTALL_HINT,
    FLA_PACKAGE,
    FLA_RECURRENT_MAX_LEN,
    MixerConfig,
    RMSNorm,
    ShortConvolution,
    configure,
    dt_bias_init,
    fla_short_conv,
    l2_normalize,
    no_weight_decay,
    reference_only,
    takes_config,
)
from .registry import MixerSpec

__all__ = ["GatedDeltaNet", "GatedDeltaNetConfig", "SPECS"]

HEADS_WIDTH_RATIO = 0.75  # upstream's docstring: num_heads * head_dim = 0.75 * hidden_size with use_gate
A_INIT_RANGE = (0, 16)  # upstream: A ~ U(0, 16), A_log = log(A)
DT_MIN, DT_MAX, DT_INIT_FLOOR = 0.001, 0.1, 1e-4  # upstream's dt_bias initialisation


@dataclass(frozen=True)
class GatedDeltaNetConfig(MixerConfig):
    """The options of ``gated-deltanet``: names and defaults of ``fla.layers.GatedDeltaNet`` but the width
    (see the module doc; ``None``: derived), plus the chunk size of our reference."""

    head_dim: int = 64
    num_heads: int | None = None
    num_v_heads: int | None = None
    expand_v: float = 2.0
    use_gate: bool = True
    use_short_conv: bool = True
    allow_neg_eigval: bool = False
    conv_size: int = 4
    conv_bias: bool = False
    norm_eps: float = 1e-5
    output_gate_activation: Literal["swish", "silu", "sigmoid"] = "swish"
    chunk_size: int = reference_only(64)


@takes_config(GatedDeltaNetConfig)
class GatedDeltaNet(Mixer):
    """Gated DeltaNet over [B, L, D]; parameters and their names as ``fla.layers.GatedDeltaNet``."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = GatedDeltaNetConfig(**config)
        head_dim, expand_v = cfg.head_dim, cfg.expand_v
        if not isinstance(cfg.chunk_size, int) or cfg.chunk_size < 1:
            raise ValueError(f"gated-deltanet: chunk_size (of the reference) must be a positive int, "
                             f"got {cfg.chunk_size!r}")
        if head_dim <= 0:
            raise ValueError(f"gated-deltanet: head_dim must be positive, got {head_dim}")
        num_heads = max(1, round(HEADS_WIDTH_RATIO * d_model / head_dim)) if cfg.num_heads is None else cfg.num_heads
        num_v_heads = num_heads if cfg.num_v_heads is None else cfg.num_v_heads
        if num_heads <= 0 or num_v_heads <= 0 or num_v_heads % num_heads:
            raise ValueError(f"gated-deltanet: num_v_heads={num_v_heads} must be a positive multiple of "
                             f"num_heads={num_heads}")
        head_v_dim = head_dim * expand_v
        if not math.isclose(head_v_dim, round(head_v_dim)):
            raise ValueError(f"gated-deltanet: head_dim * expand_v = {head_dim} * {expand_v} must be an integer")
        if cfg.output_gate_activation not in ("swish", "silu", "sigmoid"):
            raise ValueError(f"gated-deltanet: output_gate_activation must be 'swish', 'silu' or 'sigmoid', "
                             f"got {cfg.output_gate_activation!r}")
        cfg = configure(self, replace(cfg, num_heads=num_heads, num_v_heads=num_v_heads))  # self.num_heads, ...
        self.head_k_dim, self.head_v_dim = head_dim, round(head_v_dim)
        self.key_dim, self.value_dim = num_heads * head_dim, num_v_heads * self.head_v_dim
        conv_size, conv_bias = cfg.conv_size, cfg.conv_bias

        # parameters: names, shapes, registration order and initialisation as fla.layers.GatedDeltaNet
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, num_v_heads, bias=False)
        self.b_proj = nn.Linear(d_model, num_v_heads, bias=False)
        A = torch.empty(num_v_heads, dtype=torch.float32).uniform_(*A_INIT_RANGE)
        self.A_log = no_weight_decay(nn.Parameter(torch.log(A)))
        self.dt_bias = no_weight_decay(nn.Parameter(dt_bias_init(num_v_heads, DT_MIN, DT_MAX, DT_INIT_FLOOR)))
        if cfg.use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if cfg.use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.o_norm = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, activation=cfg.output_gate_activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, dtype=torch.float32)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    # ------------------------------------------------------------------ shared wiring
    def _qkv(self, x: torch.Tensor, conv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, _ = x.shape
        if self.use_short_conv:
            q, k, v = conv(self.q_conv1d, self.q_proj(x)), conv(self.k_conv1d, self.k_proj(x)), \
                conv(self.v_conv1d, self.v_proj(x))
        else:
            q, k, v = F.silu(self.q_proj(x)), F.silu(self.k_proj(x)), F.silu(self.v_proj(x))
        q = q.view(B, L, self.num_heads, self.head_k_dim)  # (B, L, H, K)
        k = k.view(B, L, self.num_heads, self.head_k_dim)
        v = v.view(B, L, self.num_v_heads, self.head_v_dim)  # (B, L, HV, V)
        return q, k, v

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        B, L = x.shape[:2]
        if self.use_gate:
            g = self.g_proj(x).view(B, L, self.num_v_heads, self.head_v_dim)
            o = self.o_norm(o, g)
        else:
            o = self.o_norm(o)  # (B, L, HV, V)
        return self.o_proj(o.reshape(B, L, self.value_dim).to(x.dtype))  # (B, L, D)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, lambda conv, t: conv(t))
        q, k = l2_normalize(q), l2_normalize(k)
        if self.num_v_heads != self.num_heads:  # GVA: value head i reads q/k head i // (HV / H)
            rep = self.num_v_heads // self.num_heads
            q, k = q.repeat_interleave(rep, dim=2), k.repeat_interleave(rep, dim=2)
        f32 = torch.float64 if x.dtype == torch.float64 else torch.float32  # gates in >= float32, as the kernel
        beta = self.b_proj(x).to(f32).sigmoid() * (2.0 if self.allow_neg_eigval else 1.0)  # (B, L, HV)
        g = -self.A_log.to(f32).exp() * F.softplus(self.a_proj(x).to(f32) + self.dt_bias.to(f32))  # (B, L, HV)
        o = delta_rule_chunked(q, k, v, beta, g, chunk_size=self.chunk_size)  # (B, L, HV, V)
        return self._output(x, o)

    def kernel_blocked(self, x: torch.Tensor) -> str | None:
        return fla_hopper_gated_bwd_bug(x)  # fla issue #640: wrong gradients on Hopper + Triton 3.4-3.7.0

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

        q, k, v = self._qkv(x, fla_short_conv)
        # upstream's mode switch: chunk whenever grads are on; fused_recurrent for short eval calls
        short_eval = not torch.is_grad_enabled() and x.shape[1] <= FLA_RECURRENT_MAX_LEN and not self.training
        op = fused_recurrent_gated_delta_rule if short_eval else chunk_gated_delta_rule
        o, _ = op(
            q=q, k=k, v=v, g=self.a_proj(x), beta=self.b_proj(x), initial_state=None, output_final_state=False,
            use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=self.allow_neg_eigval,
            state_v_first=True, use_gate_in_kernel=True, A_log=self.A_log, dt_bias=self.dt_bias,
        )
        return self._output(x, o)

    def build_upstream(self) -> nn.Module:
        """The ``fla.layers.GatedDeltaNet`` of this configuration (``load_state_dict(strict=True)`` works)."""
        from fla.layers import GatedDeltaNet as FlaGatedDeltaNet

        return FlaGatedDeltaNet(mode="chunk", hidden_size=self.d_model, **self.config.upstream_kwargs()).to(
            self.o_proj.weight.device)


SPECS = [
    MixerSpec("gated-deltanet", GatedDeltaNet,
              "Gated DeltaNet (gated delta rule, short convs), fla.layers.GatedDeltaNet parameters",
              kernel_package=FLA_PACKAGE),
]
