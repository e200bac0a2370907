"""``rwkv7``: the RWKV-7 "Goose" time mixer (generalised delta rule with a diagonal-plus-low-rank transition).

One module, the parameters of ``fla.layers.RWKV7Attention`` (flash-linear-attention 0.6.0) as upstream builds
them for ``layer_idx=0``, so state dicts load both ways (``build_upstream`` gives that fla layer).

Configuration: the upstream defaults (``head_dim=64``, or the largest divisor of ``d_model`` below 64 when
64 does not divide it; ``value_dim = d_model``, LoRA ranks derived from
``d_model`` as upstream, ``nn.GroupNorm`` output norm with eps ``head_dim * 1e-5``, ``fuse_norm=False``).

v_first: upstream threads ``v_first`` (the values of layer 0) through the later layers, which mix it into
their own values through an extra ``v_lora``. Our interface is ``mixer(x) -> y`` per layer, so every layer
behaves as upstream's layer 0: ``v_first`` is the layer's own ``v``, and there is no ``v_lora`` (upstream has
none at layer 0 either). Initialisation is upstream's for ``layer_idx=0`` of ``num_hidden_layers`` layers
(that count only sets the GroupNorm weight, ``(1 / num_hidden_layers) ** 0.7``; default 24 as fla's
``RWKV7Config``). Note that upstream zero-initialises ``o_proj``: a fresh mixer outputs zeros.

Per head, with S: [K, V], ``w_t = -0.6065 * sigmoid(w_lora(x))`` (log decay in (-0.61, 0)),
``kk = normalize(k * k_k)``, ``a = sigmoid(a_lora(x))``::

    S_t = (diag(exp(w_t)) - (kk_t * a_t) kk_t^T) S_{t-1} + k_t v_t^T,    o_t = S_t^T r_t

* ``forward_kernel``: fla's ``chunk_rwkv7`` (``fused_mul_recurrent_rwkv7`` for short no-grad eval calls) and
  its fused token-shift / addcmul / k-update / output-correction kernels, wired as upstream's forward;
* ``forward_reference``: the same wiring in PyTorch over ``delta_rule_ref.dplr_chunked``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Impl, Mixer
from .delta_rule_ref import dplr_chunked
from .modules import (
    FLA_INSTALL_HINT,
    FLA_PACKAGE,
    FLA_RECURRENT_MAX_LEN,
    LoRA,
    MixerConfig,
    configure,
    group_layer_norm,
    orthogonal_init_,
    reference_only,
    takes_config,
)
from .registry import MixerSpec

__all__ = ["RWKV7", "RWKV7Config", "SPECS"]

W_SCALE = -0.6065306597126334  # -exp(-0.5): log decay = W_SCALE * sigmoid(.), so decay >= exp(-0.6065)
UPSTREAM_HEAD_DIM = 64  # upstream's head_dim (and its LoRA ranks grow with head_dim / 64)
KERNEL_CHUNK_SIZE = 64  # the chunk size upstream passes to chunk_rwkv7
# upstream's LoRA rank rule, max(32, round(mult * sqrt(d_model) * factor / 32) * 32), per LoRA:
DECAY_RANK_MULT, GATE_RANK_MULT, A_RANK_MULT = 2.5, 5.0, 2.5


@dataclass(frozen=True)
class RWKV7Config(MixerConfig):
    """The options of ``rwkv7``: names and defaults of ``fla.layers.RWKV7Attention`` (``None``: derived from
    ``d_model`` as upstream does), plus the chunk size of our reference."""

    head_dim: int | None = None
    num_heads: int | None = None
    value_dim: int | None = None
    decay_low_rank_dim: int | None = None
    gate_low_rank_dim: int | None = None
    a_low_rank_dim: int | None = None
    elementwise_affine: bool = True
    norm_eps: float = 1e-5
    num_hidden_layers: int = 24
    chunk_size: int = reference_only(64)


# the settings of the fla layer that this mixer implements and does not expose
UPSTREAM_FIXED = dict(mode="chunk", layer_idx=0, fuse_norm=False)


def _default_rank(d_model: int, mult: float, factor: float) -> int:
    """Upstream's LoRA rank rule: ``max(32, round(mult * sqrt(d) * factor / 32) * 32)``."""
    return max(32, int(round((mult * (d_model ** 0.5)) * factor / 32) * 32))


@takes_config(RWKV7Config)
class RWKV7(Mixer):
    """RWKV-7 time mixing over [B, L, D]; parameters and names as ``fla.layers.RWKV7Attention(layer_idx=0)``."""

    kernel_package = FLA_PACKAGE
    install_hint = FLA_INSTALL_HINT

    def __init__(self, d_model: int, impl: Impl = "auto", **config: Any) -> None:
        super().__init__(d_model, impl)
        cfg = RWKV7Config(**config)
        head_dim, num_heads, value_dim, chunk_size = cfg.head_dim, cfg.num_heads, cfg.value_dim, cfg.chunk_size
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"rwkv7: chunk_size (of the reference) must be a positive int, got {chunk_size!r}")
        if head_dim is not None and num_heads is not None:
            raise ValueError(f"rwkv7: give head_dim or num_heads, not both (got {head_dim} and {num_heads})")
        if head_dim is None and num_heads is None:  # upstream's 64, or the largest divisor below it
            head_dim = max(h for h in range(1, UPSTREAM_HEAD_DIM + 1) if d_model % h == 0)
        if head_dim is not None:
            if head_dim <= 0 or d_model % head_dim:
                raise ValueError(f"rwkv7: head_dim={head_dim} must divide d_model={d_model}")
            num_heads = d_model // head_dim
        else:
            if num_heads <= 0 or d_model % num_heads:
                raise ValueError(f"rwkv7: num_heads={num_heads} must divide d_model={d_model}")
            head_dim = d_model // num_heads
        value_dim = d_model if value_dim is None else value_dim
        if value_dim % num_heads:
            raise ValueError(f"rwkv7: value_dim={value_dim} must be divisible by num_heads={num_heads}")
        if cfg.num_hidden_layers < 2:
            raise ValueError(f"rwkv7: num_hidden_layers must be >= 2 (upstream's init divides by "
                             f"num_hidden_layers - 1), got {cfg.num_hidden_layers}")
        factor = head_dim / UPSTREAM_HEAD_DIM  # upstream: larger LoRA for head_dim > 64
        cfg = configure(self, replace(  # the resolved options, also as self.head_dim, self.num_heads, ...
            cfg, head_dim=head_dim, num_heads=num_heads, value_dim=value_dim,
            decay_low_rank_dim=cfg.decay_low_rank_dim or _default_rank(d_model, DECAY_RANK_MULT, factor),
            gate_low_rank_dim=cfg.gate_low_rank_dim or _default_rank(d_model, GATE_RANK_MULT, 1.0),
            a_low_rank_dim=cfg.a_low_rank_dim or _default_rank(d_model, A_RANK_MULT, factor),
        ))
        self.key_dim, self.head_v_dim = d_model, value_dim // num_heads

        # parameters: names, shapes and registration order as fla.layers.RWKV7Attention(layer_idx=0)
        D = d_model
        self.x_r = nn.Parameter(torch.zeros(1, 1, D))
        self.x_w = nn.Parameter(torch.zeros(1, 1, D))
        self.x_k = nn.Parameter(torch.zeros(1, 1, D))
        self.x_v = nn.Parameter(torch.zeros(1, 1, D))
        self.x_a = nn.Parameter(torch.zeros(1, 1, D))
        self.x_g = nn.Parameter(torch.zeros(1, 1, D))
        self.k_k = nn.Parameter(torch.zeros(self.key_dim))
        self.k_a = nn.Parameter(torch.zeros(self.key_dim))
        self.r_k = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.r_proj = nn.Linear(D, self.key_dim, bias=False)
        self.k_proj = nn.Linear(D, self.key_dim, bias=False)
        self.v_proj = nn.Linear(D, value_dim, bias=False)
        self.o_proj = nn.Linear(value_dim, D, bias=False)
        self.w_lora = LoRA(D, self.key_dim, low_rank_dim=self.decay_low_rank_dim, activation="tanh")
        self.a_lora = LoRA(D, self.key_dim, low_rank_dim=self.a_low_rank_dim, activation=None)
        self.g_lora = LoRA(D, value_dim, low_rank_dim=self.gate_low_rank_dim, activation="sigmoid", bias=False)
        self.g_norm = nn.GroupNorm(num_heads, value_dim, eps=head_dim * cfg.norm_eps, affine=cfg.elementwise_affine)
        self._initialize_weights()

    @torch.no_grad()
    def _initialize_weights(self) -> None:
        """Upstream ``RWKV7Attention._initialize_weights`` at layer_idx=0 (ratio_0_to_1=0, ratio_1_to_almost0=1)."""
        D, hd = self.d_model, self.head_dim
        n = torch.arange(D, dtype=torch.float32)
        ddd = (n / D).view(1, 1, D)
        linear = n / (D - 1) - 0.5 if D > 1 else torch.zeros(D)
        zigzag = ((n % hd) - (hd - 1) / 2) / ((hd - 1) / 2) if hd > 1 else torch.zeros(D)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / (D - 1)) ** 1.0 if D > 1 else torch.full((D,), -6.0)
        for p, power in ((self.x_r, 0.2), (self.x_w, 0.9), (self.x_k, 0.7), (self.x_v, 0.7), (self.x_a, 0.9),
                         (self.x_g, 0.2)):
            p.copy_(1.0 - torch.pow(ddd, power))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.k_k.copy_(0.71 - linear * 0.1)
        self.w_lora.set_bias_value(www + 0.5 + zigzag * 2.5)
        self.a_lora.set_bias_value(-0.19 + zigzag * 0.3 + linear * 0.4)
        if self.g_norm.weight is not None:
            self.g_norm.weight.fill_((1 / self.num_hidden_layers) ** 0.7)
        for weight, gain in ((self.r_proj.weight, 1.0), (self.k_proj.weight, 0.1), (self.v_proj.weight, 1.0)):
            orthogonal_init_(weight, gain)
        self.o_proj.weight.zero_()

    # ------------------------------------------------------------------ shared wiring
    def _inputs(self, x: torch.Tensor, xs: tuple[torch.Tensor, ...], k_update) -> tuple[torch.Tensor, ...]:
        """From the six token-shifted mixes to r, w, k, v, kk, a, g (upstream's forward, before the op)."""
        B, L, _ = x.shape
        xr, xw, xk, xv, xa, xg = xs
        r = self.r_proj(xr)
        w = W_SCALE * self.w_lora(xw).sigmoid()  # log decay in (-0.61, 0)
        k = self.k_proj(xk)
        v = self.v_proj(xv)  # layer-0 behaviour: v_first = v, no v_lora mixing
        a = self.a_lora(xa).sigmoid()
        g = self.g_lora(xg)
        kk = F.normalize((k * self.k_k).view(B, L, self.num_heads, self.head_dim), dim=-1, p=2.0)
        k = k_update(k, a, self.k_a)  # k * (1 + (a - 1) * k_a)
        r, w, k, a = (t.view(B, L, self.num_heads, self.head_dim) for t in (r, w, k, a))  # (B, L, H, K)
        v = v.view(B, L, self.num_heads, self.head_v_dim)  # (B, L, H, V)
        return r, w, k, v, kk, a, g

    def _norm(self, o: torch.Tensor) -> torch.Tensor:
        B, L = o.shape[:2]
        return self.g_norm(o.reshape(B * L, self.value_dim)).view(B, L, self.value_dim)  # (B, L, V_all)

    def _norm_reference(self, o: torch.Tensor) -> torch.Tensor:
        """``_norm``'s maths (``g_norm``'s parameters) through ``group_layer_norm``: a faster CPU backward."""
        B, L = o.shape[:2]
        gn = self.g_norm
        return group_layer_norm(o.reshape(B, L, self.value_dim), gn.num_groups, gn.weight, gn.bias, gn.eps)

    # ------------------------------------------------------------------ paths
    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        delta = F.pad(x, (0, 0, 1, -1)) - x  # (B, L, D): x_{t-1} - x_t, zero before the start
        # x + delta * mu, not addcmul: addcmul's backward multiplies full-size tensors by its scalar value
        xs = tuple(x + delta * mu for mu in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, w, k, v, kk, a, g = self._inputs(x, xs, lambda k_, a_, ka: k_ + k_ * (a_ - 1) * ka)
        o = dplr_chunked(r, k, v, -kk, kk * a, w, scale=1.0, chunk_size=self.chunk_size)  # (B, L, H, V)
        o = self._norm_reference(o.to(x.dtype))
        correction = ((r * k * self.r_k).sum(-1, keepdim=True) * v).view(B, L, self.value_dim)
        return self.o_proj((o + correction) * g)  # (B, L, D)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        from fla.modules.token_shift import token_shift
        from fla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7
        from fla.ops.rwkv7.fused_addcmul import fused_addcmul_rwkv7
        from fla.ops.rwkv7.fused_k_update import fused_k_rwkv7
        from fla.ops.rwkv7.gate_output_correction import gate_output_correction

        L = x.shape[1]
        delta = token_shift(x)
        xs = fused_addcmul_rwkv7(x, delta, self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        r, w, k, v, kk, a, g = self._inputs(x, xs, fused_k_rwkv7)
        if self.training or L >= FLA_RECURRENT_MAX_LEN or torch.is_grad_enabled():  # upstream's mode switch
            o, _ = chunk_rwkv7(r=r, w=w, k=k, v=v, a=-kk, b=kk * a, scale=1.0, initial_state=None,
                               output_final_state=False, safe_gate=True, lower_bound=W_SCALE, chunk_size=KERNEL_CHUNK_SIZE)
        else:
            o, _ = fused_mul_recurrent_rwkv7(r=r, w=w, k=k, v=v, kk=kk, a=a, scale=1.0, initial_state=None,
                                             output_final_state=False)
        o = self._norm(o)
        return self.o_proj(gate_output_correction(o, r, k, self.r_k, v, g))

    def build_upstream(self) -> nn.Module:
        """``fla.layers.RWKV7Attention`` with this configuration at ``layer_idx=0`` (strict state-dict load works).

        Its forward returns ``(o, None, cache, v_first)``; call it without ``v_first`` (layer 0 makes its own)."""
        from fla.layers import RWKV7Attention

        return RWKV7Attention(hidden_size=self.d_model, **UPSTREAM_FIXED, **self.config.upstream_kwargs()).to(
            self.o_proj.weight.device)


SPECS = [
    MixerSpec("rwkv7", RWKV7, "RWKV-7 time mixer (DPLR delta rule), fla.layers.RWKV7Attention parameters "
              "(layer-0 v_first)", kernel_package=FLA_PACKAGE),
]
