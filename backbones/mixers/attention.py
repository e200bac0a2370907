"""``attention``: multi-head scaled-dot-product attention, the DiT / transformer baseline.

Bidirectional by default (as in DiT); ``attention-causal`` masks the future. Both run through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient backends on GPU), so the
kernel and the reference are the same PyTorch call. Parameter names follow timm's ``Attention``
(``qkv``, ``q_norm``, ``k_norm``, ``proj``), which DiT uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .registry import MixerSpec

DEFAULT_HEAD_DIM = 64  # num_heads = d_model // 64 unless given (DiT: 768 wide, 12 heads)
QK_NORM_EPS = 1e-6  # timm's Attention q_norm / k_norm


class Attention(Mixer):
    """Multi-head self-attention over [B, L, D]. The "kernel" is PyTorch's fused SDPA on CUDA."""

    kernel_package = "torch"

    def __init__(
        self,
        d_model: int,
        impl: Impl = "auto",
        *,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        causal: bool = False,
        qk_norm: bool = False,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(d_model, impl)
        num_heads = num_heads or max(1, d_model // head_dim)
        if d_model % num_heads:
            raise ValueError(f"attention: d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        hd = d_model // num_heads
        self.q_norm = nn.LayerNorm(hd, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(hd, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.proj = nn.Linear(d_model, d_model)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)

    forward_kernel = forward_reference  # SDPA picks flash / efficient attention by itself on CUDA


def _causal_attention(d_model: int, impl: Impl = "auto", **kwargs) -> Attention:
    return Attention(d_model, impl, causal=True, **kwargs)


SPECS = [
    MixerSpec("attention", Attention, "multi-head self-attention, bidirectional (the DiT baseline)", causal=False),
    MixerSpec("attention-causal", _causal_attention, "multi-head self-attention with a causal mask"),
]

