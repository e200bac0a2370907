"""``gla``: Gated Linear Attention (Yang et al. 2023), as ``fla.layers.GatedLinearAttention`` (fla 0.6.0).

Per head, a [K, V] state decays per key dimension with a data-dependent gate and takes in k v^T; the
output is ``q^T S`` (scale ``K**-0.5``), RMS-normalised per head, gated by ``swish(g_proj(x))`` and
projected back::

    q, k, v = q_proj(x), k_proj(x), v_proj(x)
    gk      = logsigmoid(gk_proj(x)) / gate_logit_normalizer       # low-rank gate, <= 0
    o       = chunk_gla(q, k, v, gk)                                # [B, L, H, V/H]
    o       = o_proj(rmsnorm_per_head(o) * swish(g_proj(x)))        # fused norm + swish gate

Configuration (upstream defaults): ``num_heads=4``, ``expand_k=0.5``, ``expand_v=1.0``,
``gate_low_rank_dim=16``, ``gate_logit_normalizer=16``, ``use_short_conv=False``, output gate on,
``fuse_norm=True`` (so the norm is ``g_norm_swish_gate``), ``feature_map=None``, ``num_kv_heads=None``.
Parameters and state-dict keys equal upstream's for that configuration; ``build_upstream`` returns the
fla layer with the same configuration.

Initialisation: xavier-uniform with gain ``2**-2.5`` on every linear weight, zero biases, unit norm
weight -- the ``_initialize_weights`` of fla's GLA layer (and of the GLA paper code; fla 0.6.0 moved
initialisation into its model classes, which a standalone mixer does not have).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
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

__all__ = ["GatedLinearAttention", "GLAConfig", "SPECS"]


@dataclass(frozen=True)
class GLAConfig(MixerConfig):
    """The options of ``gla``: names and defaults of ``fla.layers.GatedLinearAttention``."""

    num_heads: int = 4
    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16
    clamp_min: float | None = None
    norm_eps: float = 1e-5


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", use_short_conv=False, use_output_gate=True, gate_fn="swish",
                      elementwise_affine=True, fuse_norm=True)


@takes_config(GLAConfig)
class GatedLinearAttention(Mixer):
    """GLA mixer over [B, L, D], causal. Kernel: ``fla.ops.gla``; reference: chunked PyTorch."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT
    ref_chunk_size: int = DEFAULT_CHUNK_SIZE  # chunk of the reference only; outputs do not depend on it

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, GLAConfig(**config))  # also sets self.num_heads, self.expand_k, ...
        self.key_dim, self.value_dim = head_dims("gla", d_model, cfg.expand_k, cfg.expand_v, cfg.num_heads)
        if not isinstance(cfg.gate_low_rank_dim, int) or cfg.gate_low_rank_dim <= 0:
            raise ValueError(f"gla: gate_low_rank_dim must be a positive int, got {cfg.gate_low_rank_dim!r}")
        if cfg.gate_logit_normalizer <= 0:
            raise ValueError(f"gla: gate_logit_normalizer must be > 0, got {cfg.gate_logit_normalizer!r}")
        self.head_k_dim, self.head_v_dim = self.key_dim // cfg.num_heads, self.value_dim // cfg.num_heads

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, cfg.gate_low_rank_dim, bias=False),
            nn.Linear(cfg.gate_low_rank_dim, self.key_dim, bias=True),
        )
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.g_norm_swish_gate = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, activation="swish")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init_(m for m in self.modules() if isinstance(m, nn.Linear))
        nn.init.ones_(self.g_norm_swish_gate.weight)

    # ------------------------------------------------------------------ shared pieces
    def _qkvg(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] -> q, k, gk [B, L, H, K/H], v [B, L, H, V/H] (upstream's wiring up to the op)."""
        B, L, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x).view(B, L, H, self.head_k_dim)
        k = self.k_proj(x).view(B, L, H, self.head_k_dim)
        v = self.v_proj(x).view(B, L, H, self.head_v_dim)
        gk = F.logsigmoid(self.gk_proj(x).view(B, L, H, self.head_k_dim)) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = torch.clamp_min(gk, self.clamp_min)
        return q, k, v, gk

    def _out(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """o [B, L, H, V/H] -> [B, L, D]: per-head RMS norm x swish(g_proj(x)), then o_proj."""
        B, L, _ = x.shape
        g = self.g_proj(x).view(B, L, self.num_heads, self.head_v_dim)  # (B, L, H, V/H)
        o = self.g_norm_swish_gate(o, g).reshape(B, L, self.value_dim)  # (B, L, V)
        return self.o_proj(o)  # (B, L, D)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, gk = self._qkvg(x)
        o, _ = chunk_diag_linear_attn(q, k, v, gk, chunk_size=self.ref_chunk_size)  # (B, L, H, V/H)
        return self._out(x, o)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla

        q, k, v, gk = self._qkvg(x)
        if x.shape[1] <= FLA_RECURRENT_MAX_LEN:  # upstream switches to the recurrent kernel for short inputs
            o, _ = fused_recurrent_gla(q=q, k=k, v=v, gk=gk)
        else:
            o, _ = chunk_gla(q=q, k=k, v=v, g=gk)
        return self._out(x, o)

    def build_upstream(self) -> nn.Module:
        """The fla layer with this configuration (load ``self.state_dict()`` into it, strict)."""
        from fla.layers.gla import GatedLinearAttention as FlaGLA

        return FlaGLA(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec(
        "gla",
        GatedLinearAttention,
        "gated linear attention (fla GatedLinearAttention): per-key data-dependent decay, swish output gate",
        kernel_package=FLA_PACKAGE,
    ),
]
