"""mamba-ssm's and causal-conv1d's CUDA kernels as ``torch.library`` custom ops, so ``torch.compile`` sees them.

Upstream wraps its kernels in ``torch.autograd.Function`` classes whose bodies dynamo cannot trace (compiled
extensions, einops, autocast queries): a compiled ZigMa breaks its graph at every Mamba layer, and nothing
around the mixer (adaLN modulation, norms, gates, casts, residuals, scan gathers) is fused. Here each kernel is
an opaque op with a fake (shape-only) implementation and a registered autograd formula; the forward and
backward bodies call upstream's own CUDA entry points (``selective_scan_cuda.fwd/bwd``,
``causal_conv1d.cpp_functions.causal_conv1d_fwd_function/bwd_function``), transcribing upstream's wiring:

* ``mamba_inner(xz, ...)``: ``mamba_ssm``'s ``mamba_inner_fn`` (causal conv1d + x_proj + dt_proj + selective
  scan + gate + out_proj in one autograd node). Same memory as upstream's ``checkpoint_lvl=1``: the conv
  output and delta are recomputed in the backward pass, only xz, x_dbl, the scan's chunk states and its
  output are kept.
* ``selective_scan(u, delta, A, B, C, D, z, delta_bias)``: ``selective_scan_fn`` with a gate.
* ``causal_conv1d(x, weight, bias, silu)``: ``causal_conv1d_fn``.

Layouts are upstream's: ``[B, D, L]`` (channels before tokens). The ops are registered for every device: the
upstream modules are imported inside the op bodies only, so CPU tests can stand them in
(tests/backbones/test_mamba_ops.py) and a CPU-only install never imports them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mamba_inner", "selective_scan", "causal_conv1d", "SCAN_CHUNK"]

SCAN_CHUNK = 2048  # tokens per saved state of selective_scan_cuda (csrc: n_chunks = ceil(L / 2048))


def _scan_cuda():
    import selective_scan_cuda  # mamba-ssm's compiled extension

    return selective_scan_cuda


def _conv_fns():
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function

    return causal_conv1d_fwd_function, causal_conv1d_bwd_function


def _last_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _none_if_empty(t: Tensor, keep: bool) -> Tensor | None:
    return t if keep else None


def _scan_states(u: Tensor, A: Tensor) -> Tensor:
    """Fake of the scan's saved states: (B, D, n_chunks, 2 n) in A's dtype."""
    b, d, L = u.shape
    return u.new_empty(b, d, math.ceil(L / SCAN_CHUNK), 2 * A.shape[-1], dtype=A.dtype)


# ---------------------------------------------------------------------------------------------------
# causal_conv1d: x (B, D, L), weight (D, W), bias (D,) -> (B, D, L)
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("zigscan::causal_conv1d", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    fwd, _ = _conv_fns()
    return fwd(x, weight, bias, None, None, None, silu)


@_conv_op.register_fake
def _(x, weight, bias, silu):
    return torch.empty_like(x)


@torch.library.custom_op("zigscan::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, dout: Tensor, silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    _, bwd = _conv_fns()
    if dout.stride(2) != 1 and dout.stride(1) != 1:
        dout = dout.contiguous()
    dx, dweight, dbias, _ = bwd(x, weight, bias, dout, None, None, None, None, False, silu)
    return dx, dweight, dbias if dbias is not None else weight.new_empty(0)


@_conv_bwd_op.register_fake
def _(x, weight, bias, dout, silu):
    return torch.empty_like(x), torch.empty_like(weight), (torch.empty_like(bias) if bias is not None
                                                           else weight.new_empty(0))


def _conv_setup(ctx, inputs, output) -> None:
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu, ctx.has_bias = silu, bias is not None


def _conv_backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.zigscan.causal_conv1d_bwd(x, weight, bias, dy, ctx.silu)
    return dx, dweight, _none_if_empty(dbias, ctx.has_bias), None


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``causal_conv1d_fn`` as an op. x: (B, D, L); weight: (D, W); bias: (D,) -> (B, D, L)."""
    return torch.ops.zigscan.causal_conv1d(x, weight, bias, activation in ("silu", "swish"))


# ---------------------------------------------------------------------------------------------------
# selective_scan with a gate: u, delta, z (B, D, L); A (D, n); B, C (B, 1, n, L); D, delta_bias (D,)
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("zigscan::selective_scan_fwd", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor,
             delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor]:
    out, states, out_z = _scan_cuda().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out_z, out, states  # out_z = out * silu(z) is the result; out and states are kept for backward


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(z), torch.empty_like(delta), _scan_states(u, A)


@torch.library.custom_op("zigscan::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                 delta_bias: Tensor, dout: Tensor, states: Tensor, out: Tensor, delta_softplus: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = _scan_cuda().bwd(
        u, delta, A, B, C, D, z, delta_bias, _last_contiguous(dout), states, out, None, delta_softplus, False)
    return du, ddelta, dA, dB, dC, dD, ddelta_bias, dz


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, states, out, delta_softplus):
    return tuple(torch.empty_like(t) for t in (u, delta, A, B, C, D, delta_bias, z))


def _scan_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    _, out, states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, out)
    ctx.delta_softplus = delta_softplus
    ctx.mark_non_differentiable(out, states)
    ctx.set_materialize_grads(False)


def _scan_backward(ctx, dout_z, *_):
    u, delta, A, B, C, D, z, delta_bias, states, out = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = torch.ops.zigscan.selective_scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, dout_z, states, out, ctx.delta_softplus)
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None  # in the op's argument order


_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                   delta_bias: Tensor, delta_softplus: bool = True) -> Tensor:
    """``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`` as an op.

    u, delta, z: (B, D, L); A: (D, n) float32; B, C: (B, n, L); D, delta_bias: (D,) float32 -> (B, D, L)."""
    B, C = _last_contiguous(B).unsqueeze(1), _last_contiguous(C).unsqueeze(1)  # (B, 1, n, L): one group
    return torch.ops.zigscan.selective_scan_fwd(
        _last_contiguous(u), _last_contiguous(delta), A, B, C, D.contiguous(), _last_contiguous(z), delta_bias,
        delta_softplus)[0]


# ---------------------------------------------------------------------------------------------------
# mamba_inner: upstream's fused Mamba v1 layer body (checkpoint_lvl=1), variable B and C, no extra norms
# ---------------------------------------------------------------------------------------------------


def _inner_parts(xz: Tensor, conv_w: Tensor, conv_b: Tensor | None, x_dbl: Tensor | None, x_proj_w: Tensor,
                 dt_proj_w: Tensor, A: Tensor):
    """conv output, x_dbl, delta, B, C of upstream's MambaInnerFn (recomputed the same way in the backward).
    xz: (B, 2 d, L) -> conv (B, d, L), x_dbl (B*L, r + 2n), delta (B, d, L), B and C (B, 1, n, L)."""
    fwd, _ = _conv_fns()
    b, L, r, n = xz.shape[0], xz.shape[-1], dt_proj_w.shape[1], A.shape[-1]
    x = xz.chunk(2, dim=1)[0]
    conv = fwd(x, conv_w, conv_b, None, None, None, True)  # (B, d, L), silu
    if x_dbl is None:
        x_dbl = F.linear(conv.transpose(1, 2).reshape(b * L, -1), x_proj_w)  # (B*L, r + 2n)
    delta = (dt_proj_w @ x_dbl[:, :r].t()).view(-1, b, L).transpose(0, 1)  # (B, d, L), L fastest
    Bm = x_dbl[:, r:r + n].view(b, L, n).transpose(1, 2).unsqueeze(1).contiguous()  # (B, 1, n, L)
    Cm = x_dbl[:, -n:].view(b, L, n).transpose(1, 2).unsqueeze(1).contiguous()  # (B, 1, n, L)
    return conv, x_dbl, delta, Bm, Cm


@torch.library.custom_op("zigscan::mamba_inner_fwd", mutates_args=())
def _inner_op(xz: Tensor, conv_w: Tensor, conv_b: Tensor | None, x_proj_w: Tensor, dt_proj_w: Tensor,
              out_proj_w: Tensor, out_proj_b: Tensor | None, A: Tensor, D: Tensor, delta_bias: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    conv, x_dbl, delta, Bm, Cm = _inner_parts(xz, conv_w, conv_b, None, x_proj_w, dt_proj_w, A)
    z = xz.chunk(2, dim=1)[1]
    out, states, out_z = _scan_cuda().fwd(conv, delta, A, Bm, Cm, D, z, delta_bias, True)
    y = F.linear(out_z.transpose(1, 2), out_proj_w, out_proj_b)  # (B, L, D_model)
    return y, x_dbl, states, out


@_inner_op.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias):
    b, d2, L = xz.shape
    u = xz.new_empty(b, d2 // 2, L)
    return (xz.new_empty(b, L, out_proj_w.shape[0]), xz.new_empty(b * L, x_proj_w.shape[0]),
            _scan_states(u, A), xz.new_empty(d2 // 2, b, L).transpose(0, 1))  # out: laid out like delta, (d, B, L)


@torch.library.custom_op("zigscan::mamba_inner_bwd", mutates_args=())
def _inner_bwd_op(dy: Tensor, xz: Tensor, conv_w: Tensor, conv_b: Tensor | None, x_dbl: Tensor, x_proj_w: Tensor,
                  dt_proj_w: Tensor, out_proj_w: Tensor, A: Tensor, D: Tensor, delta_bias: Tensor, states: Tensor,
                  out: Tensor, out_proj_has_bias: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _, conv_bwd = _conv_fns()
    b, L, r, n = xz.shape[0], xz.shape[-1], dt_proj_w.shape[1], A.shape[-1]
    conv, _, delta, Bm, Cm = _inner_parts(xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, A)
    x, z = xz.chunk(2, dim=1)
    dxz = torch.empty_like(xz)  # (B, 2 d, L); the kernels write dx and dz into its halves
    dx, dz = dxz.chunk(2, dim=1)
    dy = _last_contiguous(dy).reshape(b * L, -1).t()  # (D_model, B*L)
    dout_y = (out_proj_w.t() @ dy).view(-1, b, L).transpose(0, 1)  # (B, d, L)
    dconv, ddelta, dA, dB, dC, dD, ddelta_bias, dz, out_z = _scan_cuda().bwd(
        conv, delta, A, Bm, Cm, D, z, delta_bias, dout_y, states, out, dz, True, True)  # recompute out_z
    dout_proj_w = torch.einsum("eB,dB->ed", dy, out_z.transpose(0, 1).reshape(out_z.shape[1], -1))
    dout_proj_b = dy.sum(dim=1) if out_proj_has_bias else dy.new_empty(0)
    dx_dbl = torch.empty_like(x_dbl)
    dx_dbl[:, r:r + n] = dB.squeeze(1).transpose(1, 2).reshape(b * L, n)
    dx_dbl[:, -n:] = dC.squeeze(1).transpose(1, 2).reshape(b * L, n)
    ddelta = ddelta.transpose(0, 1).reshape(ddelta.shape[1], -1)  # (d, B*L)
    ddt_proj_w = torch.einsum("dB,Br->dr", ddelta, x_dbl[:, :r])
    dx_dbl[:, :r] = torch.einsum("dB,dr->Br", ddelta, dt_proj_w)
    dconv = dconv.transpose(0, 1).reshape(dconv.shape[1], -1)  # (d, B*L)
    dx_proj_w = torch.einsum("Br,Bd->rd", dx_dbl, conv.transpose(1, 2).reshape(b * L, -1))
    dconv = torch.addmm(dconv, x_proj_w.t(), dx_dbl.t(), out=dconv)
    dconv = dconv.view(-1, b, L).transpose(0, 1)  # (B, d, L)
    _, dconv_w, dconv_b, _ = conv_bwd(x, conv_w, conv_b, dconv, None, None, None, dx, False, True)
    return (dxz, dconv_w, dconv_b if conv_b is not None else conv_w.new_empty(0), dx_proj_w, ddt_proj_w,
            dout_proj_w, dout_proj_b, dA, dD, ddelta_bias)


@_inner_bwd_op.register_fake
def _(dy, xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, states, out,
      out_proj_has_bias):
    e = lambda t: torch.empty_like(t)
    return (e(xz), e(conv_w), e(conv_b) if conv_b is not None else conv_w.new_empty(0), e(x_proj_w), e(dt_proj_w),
            e(out_proj_w), dy.new_empty(out_proj_w.shape[0]) if out_proj_has_bias else dy.new_empty(0), e(A), e(D),
            e(delta_bias))


def _inner_setup(ctx, inputs, output) -> None:
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias = inputs
    _, x_dbl, states, out = output
    ctx.save_for_backward(xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, states, out)
    ctx.has_conv_b, ctx.has_out_b = conv_b is not None, out_proj_b is not None
    ctx.mark_non_differentiable(x_dbl, states, out)
    ctx.set_materialize_grads(False)


def _inner_backward(ctx, dy, *_):
    xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A, D, delta_bias, states, out = ctx.saved_tensors
    (dxz, dconv_w, dconv_b, dx_proj_w, ddt_proj_w, dout_proj_w, dout_proj_b, dA, dD,
     ddelta_bias) = torch.ops.zigscan.mamba_inner_bwd(dy, xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w,
                                                      A, D, delta_bias, states, out, ctx.has_out_b)
    return (dxz, dconv_w, _none_if_empty(dconv_b, ctx.has_conv_b), dx_proj_w, ddt_proj_w, dout_proj_w,
            _none_if_empty(dout_proj_b, ctx.has_out_b), dA, dD, ddelta_bias)


_inner_op.register_autograd(_inner_backward, setup_context=_inner_setup)


def mamba_inner(xz: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, x_proj_weight: Tensor,
                dt_proj_weight: Tensor, out_proj_weight: Tensor, out_proj_bias: Tensor | None, A: Tensor, D: Tensor,
                delta_bias: Tensor) -> Tensor:
    """``mamba_inner_fn(xz, ..., delta_softplus=True)`` as an op. xz: (B, 2 d, L) with stride 1 along L;
    conv_weight: (d, W); A: (d, n) float32; D, delta_bias: (d,) float32 -> (B, L, D_model).

    The projection weights are cast to xz's dtype here (upstream casts them to the autocast dtype inside its
    Function), so the casts are visible to autograd and to the compiler."""
    dt = xz.dtype
    cast = lambda w: None if w is None else w.to(dt)
    return torch.ops.zigscan.mamba_inner_fwd(
        _last_contiguous(xz), conv_weight, conv_bias, cast(x_proj_weight), cast(dt_proj_weight), cast(out_proj_weight),
        cast(out_proj_bias), A, D.contiguous(), delta_bias)[0]


# ---------------------------------------------------------------------------------------------------
# FLOP formulas (torch.utils.flop_counter), forward ops: the GEMMs inside them, plus the scan at
# SCAN_FLOPS per (token, channel, state) (delta*A, exp, decay*h, + delta*u*B, C*h multiply-add) and the conv.
# ---------------------------------------------------------------------------------------------------

SCAN_FLOPS = 7


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.zigscan.mamba_inner_fwd)
    def _inner_flops(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, *_, out_shape=None, **__) -> int:
        b, d2, L = xz
        d, r, dm, width = d2 // 2, dt_proj_w[1], out_proj_w[0], conv_w[-1]
        n = (x_proj_w[0] - r) // 2
        return 2 * b * L * (d * x_proj_w[0] + r * d + d * dm) + b * L * d * (2 * width + SCAN_FLOPS * n)

    @register_flop_formula(torch.ops.zigscan.selective_scan_fwd)
    def _scan_flops(u, delta, A, *_, out_shape=None, **__) -> int:
        b, d, L = u
        return SCAN_FLOPS * b * d * L * A[-1]

    @register_flop_formula(torch.ops.zigscan.causal_conv1d)
    def _conv_flops(x, weight, *_, out_shape=None, **__) -> int:
        return 2 * x[0] * x[1] * x[2] * weight[-1]


_register_flop_formulas()
