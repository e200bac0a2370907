"""Parts the mixers share, in plain PyTorch (the counterpart of fla's ``fla.modules``).

A mixer file imports what it needs from here and only wires it; no mixer defines its own norm, LoRA,
convolution or initialiser, and none imports a helper from a sibling mixer. Parameter names follow the
upstream modules each part twins, so state dicts load into the upstream layers (strict).

* constants: the kernel packages, their install hints, fla's recurrent-mode threshold;
* configuration: ``MixerConfig`` (a mixer's keyword arguments, written once as a dataclass), ``configure``,
  ``takes_config``, ``upstream_only`` / ``reference_only`` fields, ``head_dims``;
* norms: ``RMSNorm`` (optional output gate and groups: fla ``RMSNorm`` / ``FusedRMSNormGated``,
  mamba_ssm's gated ``RMSNorm``), ``GroupNorm`` (fla);
* layers: ``LoRA`` (fla's RWKV LoRA), ``ShortConvolution`` (fla) with its kernel twin ``fla_short_conv``, and
  ``causal_conv1d_fn`` (causal-conv1d's kernel, or None without the package);
* functions: ``token_shift``, ``l2_normalize``, ``upcast``, ``heads_first`` (the references' head-major layout);
* initialisers: ``xavier_init_``, ``orthogonal_init_``, ``dt_bias_init``, ``no_weight_decay``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FLA_PACKAGE",
    "FLA_INSTALL_HINT",
    "FLA_RECURRENT_MAX_LEN",
    "MAMBA_PACKAGE",
    "MAMBA_INSTALL_HINT",
    "MixerConfig",
    "configure",
    "takes_config",
    "reference_only",
    "head_dims",
    "RMSNorm",
    "GroupNorm",
    "group_layer_norm",
    "LoRA",
    "ShortConvolution",
    "fla_short_conv",
    "causal_conv1d_fn",
    "token_shift",
    "l2_normalize",
    "heads_first",
    "upcast",
    "xavier_init_",
    "orthogonal_init_",
    "dt_bias_init",
    "no_weight_decay",
]

# ----------------------------------------------------------------------------------------------------------
# constants
# ----------------------------------------------------------------------------------------------------------
FLA_PACKAGE = "fla"  # flash-linear-attention: the kernels of gla, rwkv6/7, deltanet, ... (Triton)
FLA_INSTALL_HINT = "pip install 'zigscan[fla]' (needs CUDA + triton)"
# fla's layers run their fused-recurrent kernel instead of the chunked one on inputs of at most this many
# tokens (rwkv7: fewer than this many); the mixers switch at the same length.
FLA_RECURRENT_MAX_LEN = 64
MAMBA_PACKAGE = "mamba_ssm"
MAMBA_INSTALL_HINT = (
    "pip install 'zigscan[mamba]' (needs CUDA; builds mamba-ssm; add 'zigscan[conv1d]' for the fused path)"
)

XAVIER_GAIN = 2**-2.5  # fla's layer-level initialisation of linear weights (GLA paper code)


# ----------------------------------------------------------------------------------------------------------
# configuration: each keyword argument of a mixer written once
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """Base of the mixers' configuration dataclasses (nanoGPT's ``GPTConfig``).

    A subclass lists a mixer's keyword arguments with their defaults, once. The mixer takes them as
    ``Mixer(d_model, impl, **fields)`` (``takes_config`` gives the class that signature), stores the
    resolved config as ``self.config`` and each field as an attribute of the same name (``configure``),
    and ``build_upstream`` passes ``config.upstream_kwargs()`` to the upstream layer, whose argument
    names the fields share. Fields made with ``reference_only`` (the reference's chunk size, say) are
    not passed upstream.
    """

    def upstream_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of the upstream layer (without the reference-only ones)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("upstream", True)}


def reference_only(default: Any) -> Any:
    """A config field that only our reference reads (not an argument of the upstream layer)."""
    return dataclasses.field(default=default, metadata={"upstream": False})


C = TypeVar("C", bound=MixerConfig)
M = TypeVar("M", bound=type)


def configure(module: nn.Module, config: C) -> C:
    """Store ``config`` as ``module.config`` and each of its fields as an attribute of ``module``."""
    module.config = config
    for f in dataclasses.fields(config):
        setattr(module, f.name, getattr(config, f.name))
    return config


def takes_config(config_class: type[MixerConfig]) -> Callable[[M], M]:
    """Class decorator: the mixer's signature is ``(d_model, impl="auto", *, <the config's fields>)``.

    The constructor itself takes ``**config``; the signature makes ``inspect.signature``, ``help`` and the
    registry's check of unknown keyword arguments see the real options.
    """
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("d_model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="int"),
        inspect.Parameter("impl", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="auto", annotation="Impl"),
        *(inspect.Parameter(f.name, kw, default=f.default, annotation=f.type) for f in dataclasses.fields(config_class)),
    ]

    def deco(cls: M) -> M:
        cls.config_class = config_class
        cls.__signature__ = inspect.Signature(params)
        return cls

    return deco


def head_dims(name: str, d_model: int, expand_k: float, expand_v: float, num_heads: int) -> tuple[int, int]:
    """(key_dim, value_dim) = (d_model * expand_k, d_model * expand_v), checked to split into heads."""
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"{name}: num_heads must be a positive int, got {num_heads!r}")
    dims = []
    for what, expand in (("expand_k", expand_k), ("expand_v", expand_v)):
        dim = d_model * expand
        if expand <= 0 or not math.isclose(dim, round(dim)) or round(dim) % num_heads:
            raise ValueError(
                f"{name}: d_model * {what} = {d_model} * {expand} = {dim:g} must be a positive integer "
                f"divisible by num_heads={num_heads}; pick d_model, {what} or num_heads to make it so"
            )
        dims.append(round(dim))
    return dims[0], dims[1]


# ----------------------------------------------------------------------------------------------------------
# functions
# ----------------------------------------------------------------------------------------------------------
def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half types (norms and gates compute in float32, as the kernels); float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_shift(x: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] -> x[t-1] - x[t] (zero before the first token), fla's ``token_shift``."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1) - x


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, as fla's ``l2norm`` (``use_qk_l2norm_in_kernel``)."""
    xf = upcast(x)
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


class _HeadsFirst(torch.autograd.Function):
    """[B, T, H, *] -> contiguous [B, H, T, *]; the gradient goes back contiguous in [B, T, H, *] too (not as
    a transposed view: the elementwise backward ops upstream, mixing it with contiguous tensors, would run
    several times slower on a CPU)."""

    @staticmethod
    def forward(ctx, x):
        return x.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, g):
        return g.transpose(1, 2).contiguous()


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """``x.transpose(1, 2).contiguous()`` whose gradient is contiguous in x's layout (``_HeadsFirst``)."""
    return _HeadsFirst.apply(x)


# ----------------------------------------------------------------------------------------------------------
# norms
# ----------------------------------------------------------------------------------------------------------
GateActivation = Literal["swish", "silu", "sigmoid"]
_GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


class RMSNorm(nn.Module):
    """RMS norm over the last dim (``x * rsqrt(mean(x^2) + eps) * weight``, in float32), with an optional
    output gate ``act(g)`` and optional groups. Parameter: ``weight`` (absent without ``elementwise_affine``).

    * ``RMSNorm(d)``: fla's ``RMSNorm``;
    * ``RMSNorm(d, activation="swish")``: fla's ``FusedRMSNormGated``, ``norm(x) * weight * swish(g)``
      (``"sigmoid"`` for a sigmoid gate);
    * ``RMSNorm(d, activation="silu", gate_first=True, group_size=G)``: mamba_ssm's gated ``RMSNorm``
      (``norm_before_gate=False``): ``norm(x * silu(g)) * weight``, the RMS taken over groups of G channels.

    ``forward(x [..., d], g [..., d] | None) -> [..., d]`` in the dtype of x; ``g`` is required when
    ``activation`` is set.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        activation: GateActivation | None = None,
        *,
        elementwise_affine: bool = True,
        gate_first: bool = False,
        group_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if activation is not None and activation not in _GATES:
            raise ValueError(f"RMSNorm: activation must be None, 'swish', 'silu' or 'sigmoid', got {activation!r}")
        if group_size is not None and (group_size <= 0 or hidden_size % group_size):
            raise ValueError(f"RMSNorm: group_size={group_size} must divide hidden_size={hidden_size}")
        self.hidden_size, self.eps, self.activation = hidden_size, eps, activation
        self.gate_first, self.group_size = gate_first, group_size
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype)) if elementwise_affine else None

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, activation={self.activation}"

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        xf = upcast(x)
        gate = None
        if self.activation is not None:
            if g is None:
                raise ValueError("RMSNorm with an output gate needs g (the gate input), got None")
            gate = _GATES[self.activation](g.to(xf.dtype))
        if gate is not None and self.gate_first:
            xf = xf * gate
        if self.group_size is None:
            y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        else:
            xg = xf.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
            y = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)).flatten(-2)
        if self.weight is not None:
            y = y * self.weight.to(xf.dtype)
        if gate is not None and not self.gate_first:
            y = y * gate
        return y.to(x.dtype)


class GroupNorm(nn.Module):
    """fla's ``GroupNorm``: layer norm within each of ``num_groups`` groups of the last dim, with
    ``weight`` / ``bias``; ``[..., D] -> [..., D]``, computed in float32."""

    def __init__(self, num_groups: int, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_layer_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def group_layer_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float) -> torch.Tensor:
    """Group norm over the last dim of x [..., D] (``num_groups`` groups of D / G channels, each normalised
    to zero mean and unit biased variance, eps inside the square root), then the per-channel affine
    ``weight``, ``bias`` (either may be None); computed in float32 (float64 stays), returned in x's dtype.

    The maths of ``nn.GroupNorm`` on [N, D] and of fla's ``GroupNorm``, through ``F.layer_norm`` on the
    [..., G, D / G] view: on a CPU its backward is much faster than ``native_group_norm_backward``'s or
    than autograd through the mean / variance ops."""
    shape = x.shape
    xf = upcast(x)
    y = F.layer_norm(xf.reshape(*shape[:-1], num_groups, shape[-1] // num_groups), (shape[-1] // num_groups,),
                     eps=eps).reshape(shape)
    if weight is not None:  # (not addcmul: its backward multiplies full-size tensors by its scalar value)
        y = y * weight.to(xf.dtype)
    if bias is not None:
        y = y + bias.to(xf.dtype)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------------
LORA_GAIN = 0.1  # fla's LoRA: orthogonal up-projection with gain 0.1 (x sqrt(rank / out) when rank > out)


class LoRA(nn.Module):
    """fla's RWKV ``LoRA``: ``lora = Sequential(Linear(in, r, bias=False), act, Linear(r, out, bias))``,
    ``[..., in] -> [..., out]``. Initialisation as fla's: zero down-projection, orthogonal up-projection,
    zero bias (``set_bias_value`` sets it)."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int, bias: bool = True,
                 activation: Literal["tanh", "sigmoid", "relu"] | None = "tanh") -> None:
        super().__init__()
        acts = {None: nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"LoRA: activation must be one of {list(acts)}, got {activation!r}")
        self.input_dim, self.output_dim, self.low_rank_dim = input_dim, output_dim, low_rank_dim
        self.lora = nn.Sequential(
            nn.Linear(input_dim, low_rank_dim, bias=False),
            acts[activation](),
            nn.Linear(low_rank_dim, output_dim, bias=bias),
        )
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.input_dim} -> {self.low_rank_dim} -> {self.output_dim}"

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.lora[0].weight)
        out, rank = self.lora[2].weight.shape
        orthogonal_init_(self.lora[2].weight, gain=LORA_GAIN * (math.sqrt(rank / out) if rank > out else 1.0))
        if self.lora[2].bias is not None:
            nn.init.zeros_(self.lora[2].bias)

    @torch.no_grad()
    def set_bias_value(self, value: torch.Tensor) -> None:
        if self.lora[2].bias is not None:
            self.lora[2].bias.copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora(x)


class ShortConvolution(nn.Conv1d):
    """Depthwise causal conv over time, ``[B, T, D] -> [B, T, D]``; same parameters as fla's
    ``ShortConvolution`` (an ``nn.Conv1d(D, D, W, groups=D, padding=W-1)``: ``weight [D, 1, W]``, ``bias [D]``).
    ``fla_short_conv`` runs the same parameters through fla's Triton kernel."""

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False,
                 activation: Literal["silu", "swish"] | None = "silu") -> None:
        super().__init__(hidden_size, hidden_size, kernel_size, padding=kernel_size - 1, groups=hidden_size,
                         bias=bias)
        if activation not in (None, "silu", "swish"):
            raise ValueError(f"ShortConvolution: activation must be None, 'silu' or 'swish', got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w = self.weight[:, 0, :].to(x.dtype)  # (D, W)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return causal_depthwise_conv(x, w, bias, silu=self.activation is not None)  # (B, T, D)


def causal_depthwise_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                          silu: bool = False) -> torch.Tensor:
    """Depthwise causal conv over time, x [B, T, D], w [D, W], bias [D] or None (x's dtype) -> [B, T, D]: the
    maths of ``nn.Conv1d(D, D, W, groups=D, padding=W - 1)`` with the tail cut off, optionally SiLU, as
    shifted multiply-adds with a hand-written backward (``_ShortConv``). Shared by the short convolutions of
    the fla mixers and the Mamba blocks' reference (``ssm_ref.causal_conv1d``)."""
    return _ShortConv.apply(x, w, bias, silu)


class _ShortConv(torch.autograd.Function):
    """Depthwise causal conv ``y_t = act(sum_i w[:, i] * x_{t - (W - 1 - i)} + bias)``, x [B, T, D], w [D, W].

    The same as ``nn.Conv1d(groups=D, padding=W-1)`` with the tail cut off, written as W shifted in-place
    multiply-adds forward and backward (CPU depthwise conv backward is very slow; autograd through the
    shifted adds costs a padded copy and a temporary per tap). Backward is the exact adjoint:
    ``dx_t = sum_i w_i * dy_{t + W-1-i}``, ``dw_i = sum_{b,t} x_{t - (W-1-i)} * dy_t``.
    """

    @staticmethod
    def forward(ctx, x, w, bias, silu):
        T, W = x.shape[1], w.shape[1]
        y = x * w[:, W - 1]
        for s in range(1, min(W, T + 1) if T else 1):  # tap W-1-s reads x shifted by s steps
            y[:, s:].addcmul_(x[:, :T - s], w[:, W - 1 - s])
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, w, y if silu else None)
        ctx.silu, ctx.has_bias = silu, bias is not None
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, dy):
        x, w, pre = ctx.saved_tensors
        T, W = x.shape[1], w.shape[1]
        dy = torch.ops.aten.silu_backward(dy, pre) if ctx.silu else dy.contiguous()  # d pre-activation
        dx = dy * w[:, W - 1]
        dw = torch.zeros_like(w)
        dw[:, W - 1] = (x * dy).sum((0, 1))
        for s in range(1, min(W, T + 1) if T else 1):
            dx[:, :T - s].addcmul_(dy[:, s:], w[:, W - 1 - s])
            dw[:, W - 1 - s] = (x[:, :T - s] * dy[:, s:]).sum((0, 1))
        db = dy.sum((0, 1)) if ctx.has_bias else None
        return dx, dw, db, None


def fla_short_conv(conv: ShortConvolution, x: torch.Tensor) -> torch.Tensor:
    """fla's Triton ``causal_conv1d`` on a ``ShortConvolution``'s parameters: x [B, T, D] -> [B, T, D]."""
    from fla.modules.causal_conv1d import causal_conv1d

    y, _ = causal_conv1d(x=x, weight=conv.weight.squeeze(1), bias=conv.bias, activation=conv.activation,
                         backend="triton")
    return y


def causal_conv1d_fn() -> Callable[..., torch.Tensor] | None:
    """causal-conv1d's ``causal_conv1d_fn`` if the package imports (as mamba_ssm checks), else None."""
    try:
        from causal_conv1d import causal_conv1d_fn as fn
    except ImportError:
        return None
    return fn


# ----------------------------------------------------------------------------------------------------------
# initialisers
# ----------------------------------------------------------------------------------------------------------
def xavier_init_(linears: Iterable[nn.Linear]) -> None:
    """fla's convention for layers without an init of their own: xavier-uniform weights with gain
    ``2**-2.5``, zero biases."""
    for lin in linears:
        nn.init.xavier_uniform_(lin.weight, gain=XAVIER_GAIN)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)


@torch.no_grad()
def orthogonal_init_(weight: torch.Tensor, gain: float) -> None:
    """``nn.init.orthogonal_`` computed in float32 and copied in (QR has no half-precision kernels)."""
    w = weight.float()
    nn.init.orthogonal_(w, gain=gain)
    weight.copy_(w)


def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """[n] bias values b with ``softplus(b)`` log-uniform in [dt_min, dt_max] (floored at dt_init_floor):
    the time-step bias of Mamba, Mamba2 and Gated DeltaNet (one ``torch.rand(n)`` draw)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Mark ``p`` as upstream does for parameters an optimizer should not decay (``_no_weight_decay``)."""
    p._no_weight_decay = True
    return p
