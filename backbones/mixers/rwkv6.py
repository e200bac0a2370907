"""``rwkv6``: RWKV-6 "Finch" time mixing (Peng et al. 2024), as ``fla.layers.RWKV6Attention`` (fla 0.6.0).

Data-dependent token shift (``ddlerp``) feeds five projections; the state decays per key dimension
with ``w = -exp(w_proj(...))`` and the current token enters through the bonus ``u``::

    delta = shift(x) - x                                            # previous token minus current
    m     = x_proj(x, delta) (+ x_bias)                             # five LoRA mixes [B, L, 5, D]
    r, w, k, v, g = proj_i(x + delta * m_i)                         # w through a tanh LoRA
    o = chunk_rwkv6(r, k, v, -exp(w), u=bonus, scale=1)             # [B, L, H, V/H]
    o = o_proj(groupnorm_per_head(o) * swish(g))

Configuration (upstream defaults): ``num_heads=4``, ``expand_k=0.5``, ``expand_v=1.0``,
``proj_low_rank_dim=32``, ``gate_low_rank_dim=64``, ``gate_fn='swish'``, ``elementwise_affine=True``,
``norm_eps=1e-5``. The group-norm eps of official RWKV-6 (RWKV-LM, BlinkDL's ``rwkv`` runtime) is
``64e-5`` (``1e-5 * head_size_divisor**2``, divisor 8): pass ``norm_eps="official"`` (or ``OFFICIAL_NORM_EPS``)
to match official checkpoints; the default stays fla's 1e-5, so weights trained with it keep their behaviour
(tests/backbones/test_rwkv_oracle.py compares both with the ``rwkv`` runtime). Submodules (``LerpLinear``,
``DDLerpLinear`` here; ``LoRA``, ``GroupNorm`` from ``modules``) are plain-PyTorch twins of fla's with the same
parameter names.

Initialisation: the layer's own ``_initialize_weights``: xavier-uniform gain ``2**-2.5`` on linear
weights, zero biases; LoRA: zero down-projection, orthogonal up-projection (gain 0.1, x sqrt(in/out)
when in > out); ``mu``, ``x_bias`` and ``bonus`` zero; group-norm weight 1, bias 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .linear_attn_ref import DEFAULT_CHUNK_SIZE, chunk_diag_linear_attn
from .modules import (
    FLA_INSTALL_HINT,
    FLA_PACKAGE,
    FLA_RECURRENT_MAX_LEN,
    GroupNorm,
    LoRA,
    MixerConfig,
    configure,
    head_dims,
    takes_config,
    token_shift,
    xavier_init_,
)
from .registry import MixerSpec

__all__ = ["RWKV6Attention", "RWKV6Config", "LerpLinear", "DDLerpLinear", "SPECS", "OFFICIAL_NORM_EPS"]

N_MIXES = 5  # the data-dependent token-shift mixes: r, w, k, v, g
OFFICIAL_NORM_EPS = 64e-5  # official RWKV-6's ln_x eps: 1e-5 * head_size_divisor**2 with head_size_divisor = 8


@dataclass(frozen=True)
class RWKV6Config(MixerConfig):
    """The options of ``rwkv6``: names and defaults of ``fla.layers.RWKV6Attention``."""

    num_heads: int = 4
    expand_k: float = 0.5
    expand_v: float = 1.0
    proj_low_rank_dim: int = 32
    gate_low_rank_dim: int = 64
    norm_eps: float | Literal["official"] = 1e-5

    def __post_init__(self) -> None:
        eps = OFFICIAL_NORM_EPS if self.norm_eps == "official" else self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"rwkv6: norm_eps must be a positive number or 'official' ({OFFICIAL_NORM_EPS}, "
                             f"official RWKV-6's), got {self.norm_eps!r}")
        object.__setattr__(self, "norm_eps", float(eps))


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", gate_fn="swish", fuse_norm=True, elementwise_affine=True)


class LerpLinear(nn.Module):
    """fla's ``LerpLinear``: ``linear(x + delta * mu)`` with a learned static mix ``mu``."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim, bias=False)
        self.mu = nn.Parameter(torch.zeros(input_dim))

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.linear(x + delta * self.mu)


class DDLerpLinear(nn.Module):
    """fla's ``DDLerpLinear``: ``linear(x + delta * mu)`` with a data-dependent mix ``mu``."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int | None = None) -> None:
        super().__init__()
        self.linear: nn.Module = (
            nn.Linear(input_dim, output_dim, bias=False) if low_rank_dim is None
            else LoRA(input_dim, output_dim, low_rank_dim)
        )

    def forward(self, x: torch.Tensor, mu: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.linear(x + delta * mu)


@takes_config(RWKV6Config)
class RWKV6Attention(Mixer):
    """RWKV6 time-mix over [B, L, D], causal. Kernel: ``fla.ops.rwkv6``; reference: chunked PyTorch."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT
    ref_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = configure(self, RWKV6Config(**config))  # also sets self.num_heads, self.expand_k, ...
        self.key_dim, self.value_dim = head_dims("rwkv6", d_model, cfg.expand_k, cfg.expand_v, cfg.num_heads)
        for name in ("proj_low_rank_dim", "gate_low_rank_dim"):
            val = getattr(cfg, name)
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"rwkv6: {name} must be a positive int, got {val!r}")
        self.head_k_dim, self.head_v_dim = self.key_dim // cfg.num_heads, self.value_dim // cfg.num_heads
        rank = cfg.proj_low_rank_dim

        self.x_proj = nn.Sequential(
            LerpLinear(d_model, rank * N_MIXES),
            nn.Tanh(),
            nn.Linear(rank * N_MIXES, d_model, bias=False),
        )
        self.x_bias = nn.Parameter(torch.zeros(N_MIXES, d_model))
        self.r_proj = DDLerpLinear(d_model, self.key_dim)
        self.w_proj = DDLerpLinear(d_model, self.key_dim, low_rank_dim=cfg.gate_low_rank_dim)
        self.k_proj = DDLerpLinear(d_model, self.key_dim)
        self.v_proj = DDLerpLinear(d_model, self.value_dim)
        self.g_proj = DDLerpLinear(d_model, self.value_dim)
        self.bonus = nn.Parameter(torch.zeros(cfg.num_heads, self.head_k_dim))
        self.g_norm = GroupNorm(cfg.num_heads, self.value_dim, eps=cfg.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        lora_linears = {id(m) for mod in self.modules() if isinstance(mod, LoRA) for m in mod.lora}
        for m in self.modules():
            if isinstance(m, LoRA):
                m.reset_parameters()
            elif isinstance(m, nn.Linear) and id(m) not in lora_linears:
                xavier_init_((m,))  # in module order, between the LoRAs (the order of the random draws)
        for p in (self.x_proj[0].mu, self.x_bias, self.bonus, self.g_norm.bias):
            nn.init.zeros_(p)
        nn.init.ones_(self.g_norm.weight)

    # ------------------------------------------------------------------ shared pieces
    def _rwkvg(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] -> r, w, k [B, L, H, K/H] (w = log-decay <= 0), v [B, L, H, V/H], g [B, L, V]."""
        B, L, D = x.shape
        delta = token_shift(x)  # (B, L, D)
        m = self.x_proj[0](x, delta).view(B, L, N_MIXES, self.proj_low_rank_dim)  # (B, L, 5, R)
        # mix i = tanh(m_i) W_i^T + x_bias_i, W_i the i-th block of R columns of x_proj[2].weight: five
        # products on strided views (unbind: one stack in backward), no permuted copies of an einsum
        ws = self.x_proj[2].weight.view(D, N_MIXES, -1).unbind(1)  # each (D, R)
        m_r, m_w, m_k, m_v, m_g = (F.linear(mi, wi, bi) for mi, wi, bi in
                                   zip(self.x_proj[1](m).unbind(2), ws, self.x_bias.unbind(0)))  # each (B, L, D)
        r = self.r_proj(x, m_r, delta).view(B, L, self.num_heads, self.head_k_dim)
        w = self.w_proj(x, m_w, delta).view(B, L, self.num_heads, self.head_k_dim)
        k = self.k_proj(x, m_k, delta).view(B, L, self.num_heads, self.head_k_dim)
        v = self.v_proj(x, m_v, delta).view(B, L, self.num_heads, self.head_v_dim)
        g = self.g_proj(x, m_g, delta)  # (B, L, V)
        return r, -torch.exp(w), k, v, g

    def _out(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        B, L = o.shape[:2]
        o = self.g_norm(o.reshape(B, L, self.value_dim)) * F.silu(g)  # (B, L, V)
        return self.o_proj(o)  # (B, L, D)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        r, w, k, v, g = self._rwkvg(x)
        o, _ = chunk_diag_linear_attn(r, k, v, w, u=self.bonus, scale=1.0, chunk_size=self.ref_chunk_size)
        return self._out(o, g)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

        r, w, k, v, g = self._rwkvg(x)
        op = fused_recurrent_rwkv6 if x.shape[1] <= FLA_RECURRENT_MAX_LEN else chunk_rwkv6  # upstream's switch
        o, _ = op(r=r, k=k, v=v, w=w, u=self.bonus, scale=1.0)
        return self._out(o, g)

    def build_upstream(self) -> nn.Module:
        """The fla layer with this configuration (load ``self.state_dict()`` into it, strict)."""
        from fla.layers.rwkv6 import RWKV6Attention as FlaRWKV6

        return FlaRWKV6(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs())


SPECS = [
    MixerSpec(
        "rwkv6",
        RWKV6Attention,
        "RWKV-6 time mixing (fla RWKV6Attention): data-dependent token shift and decay, bonus u",
        kernel_package=FLA_PACKAGE,
    ),
]
