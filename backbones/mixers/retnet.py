"""``retnet``: multi-scale retention (RetNet, Sun et al. 2023), as ``fla.layers.MultiScaleRetention`` (fla 0.6.0).

Linear attention with a fixed, data-independent decay per head ``gamma_h = 1 - 2**(-5 - h)`` and
rotary position embeddings on queries and keys::

    q, k = rotary(q_proj(x), k_proj(x)); v = v_proj(x)              # [B, L, H, K/H], [B, L, H, V/H]
    o = chunk_retention(q, k, v)                                    # scale (K/H)**-0.5
    o = o_proj(rmsnorm_per_head(o) * swish(g_proj(x)))

Configuration: upstream defaults ``num_heads=8``, ``expand_k=1``, ``expand_v=2``, ``use_short_conv=False``,
output gate on, fused norm + swish gate (``g_norm_swish_gate``), rotary base 10000, non-interleaved (the
rotary tables are buffers that upstream does not save, so they are recomputed here, not stored).
Initialisation as ``gla`` (xavier-uniform gain ``2**-2.5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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

__all__ = ["MultiScaleRetention", "RetNetConfig", "retention_log_decays", "rotary", "SPECS"]

ROTARY_BASE = 10000.0


def retention_log_decays(num_heads: int, device: torch.device | None = None) -> torch.Tensor:
    """[H] log-decays ``log(1 - 2**(-5 - h))`` of RetNet (fla's ``chunk_retention``)."""
    return (1 - 2.0 ** (-5.0 - torch.arange(num_heads, dtype=torch.float, device=device))).log()


def rotary(x: torch.Tensor, base: float = ROTARY_BASE) -> torch.Tensor:
    """Non-interleaved (GPT-NeoX) rotary embedding of x [B, L, H, d] at positions 0..L-1 (fla's ``RotaryEmbedding``)."""
    L, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))  # (d/2,)
    freqs = torch.outer(torch.arange(L, device=x.device, dtype=torch.float32), inv_freq)  # (L, d/2)
    cos = freqs.cos().to(x.dtype).repeat(1, 2)[:, None]  # (L, 1, d): tables in x's dtype, as upstream caches them
    sin = freqs.sin().to(x.dtype)
    sin = torch.cat((-sin, sin), dim=-1)[:, None]  # the rotation's sign folded into the (L, 1, d) table
    # x * cos + cat(-x2, x1) * sin, with cat(x2, x1) = roll(x, d / 2): no negation of a full-size half
    return x * cos + x.roll(d // 2, dims=-1) * sin


@dataclass(frozen=True)
class RetNetConfig(MixerConfig):
    """The options of ``retnet``: names and defaults of ``fla.layers.MultiScaleRetention``."""

    num_heads: int = 8
    expand_k: float = 1.0
    expand_v: float = 2.0
    norm_eps: float = 1e-5


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", use_short_conv=False, use_output_gate=True, gate_fn="swish",
                      elementwise_affine=True, fuse_norm=True)
MAX_ROTARY_HEAD_DIM = 256  # fla's rotary kernel takes key head dims up to 256


@takes_config(RetNetConfig)
class MultiScaleRetention(Mixer):
    """RetNet mixer over [B, L, D], causal. Kernel: ``fla.ops.retention``; reference: chunked PyTorch."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT
    ref_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, RetNetConfig(**config))  # also sets self.num_heads, self.expand_k, ...
        self.key_dim, self.value_dim = head_dims("retnet", d_model, cfg.expand_k, cfg.expand_v, cfg.num_heads)
        self.head_k_dim, self.head_v_dim = self.key_dim // cfg.num_heads, self.value_dim // cfg.num_heads
        if self.head_k_dim % 2 or self.head_k_dim > MAX_ROTARY_HEAD_DIM:
            raise ValueError(
                f"retnet: the rotary embedding needs an even key head dim <= {MAX_ROTARY_HEAD_DIM}, got "
                f"d_model * expand_k / num_heads = {self.head_k_dim}; change expand_k or num_heads"
            )

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.g_norm_swish_gate = RMSNorm(self.head_v_dim, eps=cfg.norm_eps, activation="swish")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init_((self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.o_proj))
        nn.init.ones_(self.g_norm_swish_gate.weight)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B, L, _ = x.shape
        q = rotary(self.q_proj(x).view(B, L, self.num_heads, self.head_k_dim))  # (B, L, H, K/H)
        k = rotary(self.k_proj(x).view(B, L, self.num_heads, self.head_k_dim))
        v = self.v_proj(x).view(B, L, self.num_heads, self.head_v_dim)  # (B, L, H, V/H)
        return q, k, v

    def _out(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        g = self.g_proj(x).view(B, L, self.num_heads, self.head_v_dim)
        return self.o_proj(self.g_norm_swish_gate(o, g).reshape(B, L, self.value_dim))  # (B, L, D)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        g = retention_log_decays(self.num_heads, x.device).expand(q.shape[:3])  # (B, L, H): one per head
        o, _ = chunk_diag_linear_attn(q, k, v, g, chunk_size=self.ref_chunk_size)
        return self._out(x, o)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.retention import chunk_retention, fused_recurrent_retention

        q, k, v = self._qkv(x)
        if not torch.is_grad_enabled() and x.shape[1] <= FLA_RECURRENT_MAX_LEN:  # upstream's mode switch
            o, _ = fused_recurrent_retention(q=q, k=k, v=v)
        else:
            o, _ = chunk_retention(q=q, k=k, v=v)
        return self._out(x, o)

    def build_upstream(self) -> nn.Module:
        """The fla layer with this configuration (load ``self.state_dict()`` into it, strict)."""
        from fla.layers.multiscale_retention import MultiScaleRetention as FlaRetention

        return FlaRetention(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec(
        "retnet",
        MultiScaleRetention,
        "multi-scale retention (fla MultiScaleRetention): fixed per-head decay, rotary q/k, swish gate",
        kernel_package=FLA_PACKAGE,
    ),
]
