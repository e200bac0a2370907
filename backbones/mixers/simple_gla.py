"""``simple-gla``: GLA with one scalar decay per head (Lightning-Attention-2 / RetNet-style gating), as
``fla.layers.SimpleGatedLinearAttention`` (fla 0.6.0)::

    q, k, v = q_proj(x), k_proj(x), v_proj(x)                       # [B, L, H, K/H], [B, L, H, V/H]
    g       = logsigmoid(gk_proj(x)) / gate_logit_normalizer        # [B, L, H], one log-decay per head
    o       = chunk_simple_gla(q, k, v, g)                          # scale (K/H)**-0.5
    o       = o_proj(rmsnorm_per_head(o) * swish(g_proj(x)))

Configuration: upstream defaults ``num_heads=4``, ``expand_k=1``, ``expand_v=1``,
``gate_logit_normalizer=16``, fused norm + swish gate (``g_norm_swish_gate``), except
``use_short_conv=False`` (upstream default True; the zigscan family runs without short convolutions).
Initialisation as ``gla`` (xavier-uniform gain ``2**-2.5``, zero biases). The reference broadcasts the
scalar gate over the key dimension in the shared linear-attention op (``linear_attn_ref``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer, fla_hopper_gated_bwd_bug
from .linear_attn_ref import DEFAULT_CHUNK_SIZE, chunk_diag_linear_attn
from .modules import (
    FLA_INSTALL_HINT,
    FLA_PACKAGE,
    FLA_RECURRENT_MAX_LEN,
    MixerConfig,
    RMSNorm,
    configure,
    head_dims,
    takes_config,
    xavier_init_,
)
from .registry import MixerSpec

__all__ = ["SimpleGatedLinearAttention", "SimpleGLAConfig", "SPECS"]


@dataclass(frozen=True)
class SimpleGLAConfig(MixerConfig):
    """The options of ``simple-gla``: names and defaults of ``fla.layers.SimpleGatedLinearAttention``."""

    num_heads: int = 4
    expand_k: float = 1.0
    expand_v: float = 1.0
    gate_logit_normalizer: float = 16
    norm_eps: float = 1e-5


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", use_short_conv=False, gate_fn="swish", elementwise_affine=True, fuse_norm=True)


@takes_config(SimpleGLAConfig)
class SimpleGatedLinearAttention(Mixer):
    """Simple GLA mixer over [B, L, D], causal. Kernel: ``fla.ops.simple_gla``; reference: chunked PyTorch."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT
    ref_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, SimpleGLAConfig(**config))  # also sets self.num_heads, self.expand_k, ...
        self.key_dim, self.value_dim = head_dims("simple-gla", d_model, cfg.expand_k, cfg.expand_v, cfg.num_heads)
        if cfg.gate_logit_normalizer <= 0:
            raise ValueError(f"simple-gla: gate_logit_normalizer must be > 0, got {cfg.gate_logit_normalizer!r}")
        self.head_k_dim, self.head_v_dim = self.key_dim // cfg.num_heads, self.value_dim // cfg.num_heads

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Linear(d_model, cfg.num_heads)
        self.g_norm_swish_gate = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, activation="swish")
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init_(m for m in self.modules() if isinstance(m, nn.Linear))
        nn.init.ones_(self.g_norm_swish_gate.weight)

    def _qkvg(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] -> q, k [B, L, H, K/H], v [B, L, H, V/H], g [B, L, H] (log-decay per head)."""
        B, L, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x).view(B, L, H, self.head_k_dim)
        k = self.k_proj(x).view(B, L, H, self.head_k_dim)
        v = self.v_proj(x).view(B, L, H, self.head_v_dim)
        g = F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer  # (B, L, H)
        return q, k, v, g

    def _out(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        g = self.g_proj(x).view(B, L, self.num_heads, self.head_v_dim)  # (B, L, H, V/H)
        return self.o_proj(self.g_norm_swish_gate(o, g).reshape(B, L, self.value_dim))  # (B, L, D)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, g = self._qkvg(x)  # g (B, L, H): the same decay on every key dim
        o, _ = chunk_diag_linear_attn(q, k, v, g, chunk_size=self.ref_chunk_size)
        return self._out(x, o)

    def kernel_blocked(self, x: torch.Tensor) -> str | None:
        return fla_hopper_gated_bwd_bug(x)  # fla issue #640: wrong gradients on Hopper + Triton 3.4-3.7.0

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        q, k, v, g = self._qkvg(x)
        if not torch.is_grad_enabled() and x.shape[1] <= FLA_RECURRENT_MAX_LEN:  # upstream's mode switch
            o, _ = fused_recurrent_simple_gla(q=q, k=k, v=v, g=g)
        else:
            o, _ = chunk_simple_gla(q=q, k=k, v=v, g=g)
        return self._out(x, o)

    def build_upstream(self) -> nn.Module:
        """The fla layer with this configuration (load ``self.state_dict()`` into it, strict)."""
        from fla.layers.simple_gla import SimpleGatedLinearAttention as FlaSimpleGLA

        return FlaSimpleGLA(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec(
        "simple-gla",
        SimpleGatedLinearAttention,
        "simple gated linear attention (fla SimpleGatedLinearAttention): one data-dependent decay per head",
        kernel_package=FLA_PACKAGE,
    ),
]
