"""``deltanet``: DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule").

One module, the parameters of ``fla.layers.DeltaNet`` (flash-linear-attention 0.6.0), so state dicts load
both ways (``build_upstream`` gives the fla layer with the same configuration). Configuration: the upstream
layer defaults (``num_heads=4``, ``expand_k = expand_v = 1``, ``use_beta``, no output gate, short
convolutions of size 4 without bias, SiLU on q/k, L2-normalised q/k, RMSNorm on the output, eps 1e-5);
every one of them is a keyword argument. ``d_model`` plays fla's ``hidden_size``.

Per head, with S: [K, V] and L2-normalised q, k (scale K ** -0.5)::

    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

* ``forward_kernel``: fla's ``causal_conv1d`` and ``chunk_delta_rule`` (``fused_recurrent_delta_rule`` for
  L <= 64, as upstream), wired as ``fla.layers.DeltaNet.forward`` without mask / cache paths;
* ``forward_reference``: the same wiring over ``delta_rule_ref.delta_rule_chunked`` (WY/UT chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .delta_rule_ref import delta_rule_chunked
from .modules import (
    FLA_INSTALL_HINT,
    FLA_PACKAGE,
    FLA_RECURRENT_MAX_LEN,
    MixerConfig,
    RMSNorm,
    ShortConvolution,
    configure,
    fla_short_conv,
    l2_normalize,
    reference_only,
    takes_config,
)
from .registry import MixerSpec

__all__ = ["DeltaNet", "DeltaNetConfig", "SPECS"]

QKActivation = Literal["silu", "relu", "elu", "identity"]
SUM_NORM_EPS = 1e-6  # fla's sum_norm (qk_norm="sum") eps


@dataclass(frozen=True)
class DeltaNetConfig(MixerConfig):
    """The options of ``deltanet``: names and defaults of ``fla.layers.DeltaNet``, plus the chunk size of
    our reference."""

    num_heads: int = 4
    expand_k: float = 1.0
    expand_v: float = 1.0
    use_beta: bool = True
    use_gate: bool = False
    use_short_conv: bool = True
    conv_size: int = 4
    conv_bias: bool = False
    allow_neg_eigval: bool = False
    qk_activation: QKActivation = "silu"
    qk_norm: Literal["l2", "sum"] = "l2"
    norm_eps: float = 1e-5
    chunk_size: int = reference_only(64)


@takes_config(DeltaNetConfig)
class DeltaNet(Mixer):
    """DeltaNet over [B, L, D]; parameters and their names as ``fla.layers.DeltaNet``."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, DeltaNetConfig(**config))  # also sets self.num_heads, self.use_beta, ...
        if not isinstance(cfg.chunk_size, int) or cfg.chunk_size < 1:
            raise ValueError(f"deltanet: chunk_size (of the reference) must be a positive int, got {cfg.chunk_size!r}")
        if cfg.qk_activation not in ("silu", "relu", "elu", "identity"):
            raise ValueError(f"deltanet: qk_activation must be 'silu', 'relu', 'elu' or 'identity', "
                             f"got {cfg.qk_activation!r}")
        if cfg.qk_norm not in ("l2", "sum"):
            raise ValueError(f"deltanet: qk_norm must be 'l2' or 'sum', got {cfg.qk_norm!r}")
        num_heads = cfg.num_heads
        key_dim, value_dim = d_model * cfg.expand_k, d_model * cfg.expand_v
        if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
            raise ValueError(f"deltanet: d_model * expand_k ({key_dim}) and d_model * expand_v ({value_dim}) "
                             "must be integers; pick expand_k / expand_v accordingly")
        self.key_dim, self.value_dim = round(key_dim), round(value_dim)
        if num_heads <= 0 or self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(f"deltanet: num_heads={num_heads} must divide key_dim={self.key_dim} and "
                             f"value_dim={self.value_dim} (d_model={d_model} times expand_k / expand_v)")
        if cfg.conv_size < 1:
            raise ValueError(f"deltanet: conv_size must be >= 1, got {cfg.conv_size}")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        conv_size, conv_bias = cfg.conv_size, cfg.conv_bias

        # parameters: names, shapes and registration order as fla.layers.DeltaNet
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        if cfg.use_beta:
            self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        if cfg.use_short_conv:
            qk_act = "silu" if cfg.qk_activation == "silu" else None
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if cfg.use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.o_norm = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, activation="swish")
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, dtype=torch.float32)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    # ------------------------------------------------------------------ shared wiring
    def _qkv_beta(self, x: torch.Tensor, conv) -> tuple[torch.Tensor, ...]:
        """Projections, short convs, activations and q/k normalisation of the upstream forward."""
        B, L, _ = x.shape
        if self.use_short_conv:
            q, k, v = conv(self.q_conv1d, self.q_proj(x)), conv(self.k_conv1d, self.k_proj(x)), \
                conv(self.v_conv1d, self.v_proj(x))  # (B, L, key_dim | value_dim)
        else:
            q, k = self.q_proj(x), self.k_proj(x)
            if self.qk_activation == "silu":
                q, k = F.silu(q), F.silu(k)
            v = F.silu(self.v_proj(x))
        q = q.view(B, L, self.num_heads, self.head_k_dim)  # (B, L, H, K)
        k = k.view(B, L, self.num_heads, self.head_k_dim)
        v = v.view(B, L, self.num_heads, self.head_v_dim)  # (B, L, H, V)
        if self.qk_activation == "relu":
            q, k = q.relu(), k.relu()
        elif self.qk_activation == "elu":
            q, k = F.elu(q, 1.0, False) + 1.0, F.elu(k, 1.0, False) + 1.0  # fla elu_p1
        if self.qk_norm == "sum":
            q = F.normalize(q, p=1, dim=-1, eps=SUM_NORM_EPS).to(q)
            k = F.normalize(k, p=1, dim=-1, eps=SUM_NORM_EPS).to(k)
        beta = self.b_proj(x).sigmoid() if self.use_beta else torch.ones_like(q[..., 0])  # (B, L, H)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        return q, k, v, beta

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        B, L = x.shape[:2]
        if self.use_gate:
            g = self.g_proj(x).view(B, L, self.num_heads, self.head_v_dim)
            o = self.o_norm(o, g)
        else:
            o = self.o_norm(o)  # (B, L, H, V)
        return self.o_proj(o.reshape(B, L, self.value_dim).to(x.dtype))  # (B, L, D)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, beta = self._qkv_beta(x, lambda conv, t: conv(t))
        if self.qk_norm == "l2":
            q, k = l2_normalize(q), l2_normalize(k)
        o = delta_rule_chunked(q, k, v, beta, chunk_size=self.chunk_size)  # (B, L, H, V)
        return self._output(x, o)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

        q, k, v, beta = self._qkv_beta(x, fla_short_conv)
        op = fused_recurrent_delta_rule if x.shape[1] <= FLA_RECURRENT_MAX_LEN else chunk_delta_rule  # upstream's mode switch
        o, _ = op(q=q, k=k, v=v, beta=beta, initial_state=None, output_final_state=False,
                  use_qk_l2norm_in_kernel=(self.qk_norm == "l2"))
        return self._output(x, o)

    def build_upstream(self) -> nn.Module:
        """The ``fla.layers.DeltaNet`` of this configuration (``load_state_dict(strict=True)`` works)."""
        from fla.layers import DeltaNet as FlaDeltaNet

        return FlaDeltaNet(mode="chunk", hidden_size=self.d_model, **self.config.upstream_kwargs()).to(
            self.o_proj.weight.device)


SPECS = [
    MixerSpec("deltanet", DeltaNet, "DeltaNet (delta rule, short convs), fla.layers.DeltaNet parameters",
              kernel_package=FLA_PACKAGE),
]
