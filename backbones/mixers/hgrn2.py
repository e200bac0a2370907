"""``hgrn2``: HGRN2 (Qin et al. 2024), as ``fla.layers.HGRN2Attention`` (fla 0.6.0).

A gated linear RNN with state expansion, run through the GLA op: the forget gate ``f`` gives the
log-decay ``g = logsigmoid(f)`` and the key is tied to it (``k = 1 - exp(g)``)::

    q = swish(q_proj(x)); g = logsigmoid(f_proj(x)); k = 1 - exp(g); i = i_proj(x)
    o = chunk_gla(q, k, i, g)                      # [B, L, H, D/H], scale expand_ratio**-0.5
    o = o_proj(rmsnorm(o))                         # RMS norm over all of D (fused norm + linear upstream)

Configuration: upstream's ``expand_ratio=128`` (head forget dim), hence ``num_heads = d_model // 128``;
for ``d_model < 128`` (small test widths) the default becomes ``expand_ratio = d_model`` (one head).
``num_heads`` alone gives ``expand_ratio = d_model // num_heads`` (upstream's rule);
``use_short_conv=False``, ``elementwise_affine=True``, norm eps 1e-5 (upstream's forward always uses 1e-5).

Initialisation: xavier-uniform with gain ``2**-2.5`` on the linear weights (fla's former layer-level
``_initialize_weights`` convention, as for ``gla``), unit norm weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    takes_config,
    xavier_init_,
)
from .registry import MixerSpec

__all__ = ["HGRN2Attention", "HGRN2Config", "SPECS"]

NORM_EPS = 1e-5  # upstream's rms_norm_linear call never passes g_norm.eps, so 1e-5 is what runs
UPSTREAM_EXPAND_RATIO = 128  # upstream's default head forget dim


@dataclass(frozen=True)
class HGRN2Config(MixerConfig):
    """The options of ``hgrn2`` (``fla.layers.HGRN2Attention``'s names); ``None``: derived, see the module doc."""

    num_heads: int | None = None
    expand_ratio: int | None = None


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", use_short_conv=False, elementwise_affine=True, norm_eps=NORM_EPS)


def resolve_heads(d_model: int, num_heads: int | None, expand_ratio: int | None) -> tuple[int, int]:
    """(num_heads, expand_ratio) following upstream's rules (see the module docstring), validated."""
    if expand_ratio is None and num_heads is None:
        expand_ratio = min(UPSTREAM_EXPAND_RATIO, d_model)
    if expand_ratio is not None:
        if not isinstance(expand_ratio, int) or not 0 < expand_ratio <= d_model:
            raise ValueError(f"hgrn2: expand_ratio must be an int in [1, d_model={d_model}], got {expand_ratio!r}")
        heads = d_model // expand_ratio
        if num_heads is not None and num_heads != heads:
            raise ValueError(
                f"hgrn2: num_heads={num_heads} contradicts expand_ratio={expand_ratio} (upstream sets "
                f"num_heads = d_model // expand_ratio = {heads}); pass only one of them"
            )
        num_heads = heads
    else:
        if not isinstance(num_heads, int) or not 0 < num_heads <= d_model:
            raise ValueError(f"hgrn2: num_heads must be an int in [1, d_model={d_model}], got {num_heads!r}")
        expand_ratio = d_model // num_heads
    if d_model % num_heads:
        raise ValueError(
            f"hgrn2: d_model={d_model} must be divisible by num_heads={num_heads} "
            f"(= d_model // expand_ratio); choose expand_ratio or num_heads that divide d_model"
        )
    return num_heads, expand_ratio


@takes_config(HGRN2Config)
class HGRN2Attention(Mixer):
    """HGRN2 mixer over [B, L, D], causal. Kernel: ``fla.ops.gla``; reference: chunked PyTorch."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT
    ref_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = HGRN2Config(**config)
        num_heads, expand_ratio = resolve_heads(d_model, cfg.num_heads, cfg.expand_ratio)
        configure(self, replace(cfg, num_heads=num_heads, expand_ratio=expand_ratio))  # self.num_heads, ...
        self.forget_dim = self.num_heads * self.expand_ratio
        self.head_f_dim, self.head_i_dim = self.expand_ratio, d_model // self.num_heads

        self.q_proj = nn.Linear(d_model, self.forget_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.forget_dim, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_norm = RMSNorm(d_model, eps=NORM_EPS)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_init_((self.q_proj, self.f_proj, self.i_proj, self.o_proj))
        nn.init.ones_(self.g_norm.weight)

    def _qkig(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] -> q, k, g [B, L, H, expand_ratio], i [B, L, H, D/H]."""
        B, L, _ = x.shape
        H = self.num_heads
        q = F.silu(self.q_proj(x))
        g = F.logsigmoid(self.f_proj(x))  # (B, L, F), <= 0
        i = self.i_proj(x)
        k = (1 - g.exp()).to(i.dtype)  # the key is tied to the forget gate
        return (q.view(B, L, H, self.head_f_dim), k.view(B, L, H, self.head_f_dim),
                i.view(B, L, H, self.head_i_dim), g.view(B, L, H, self.head_f_dim))

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        B, L = o.shape[:2]
        return self.o_proj(self.g_norm(o.reshape(B, L, self.d_model)))  # (B, L, D)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, i, g = self._qkig(x)
        o, _ = chunk_diag_linear_attn(q, k, i, g, chunk_size=self.ref_chunk_size)  # (B, L, H, D/H)
        return self._out(o)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla

        q, k, i, g = self._qkig(x)
        if x.shape[1] <= FLA_RECURRENT_MAX_LEN:  # upstream switches to the recurrent kernel for short inputs
            o, _ = fused_recurrent_gla(q=q, k=k, v=i, gk=g)
        else:
            o, _ = chunk_gla(q=q, k=k, v=i, g=g)
        return self._out(o)

    def build_upstream(self) -> nn.Module:
        """The fla layer with this configuration (load ``self.state_dict()`` into it, strict)."""
        from fla.layers.hgrn2 import HGRN2Attention as FlaHGRN2

        return FlaHGRN2(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec(
        "hgrn2",
        HGRN2Attention,
        "HGRN2 (fla HGRN2Attention): gated linear RNN with state expansion, via the GLA op",
        kernel_package=FLA_PACKAGE,
    ),
]
