"""Pure-PyTorch stand-ins for mamba-ssm's and causal-conv1d's CUDA entry points, for CPU tests of the kernel
path's wiring (zigscan.backbones.mixers.mamba_ops and the Mamba mixers' forward_kernel).

They have the signatures, layouts, output lists and out-arguments of ``selective_scan_cuda.fwd/bwd`` and
``causal_conv1d.cpp_functions.causal_conv1d_fwd_function/bwd_function`` (mamba-ssm 2.3.2, causal-conv1d 1.7.0),
check the stride and dtype rules the CUDA kernels check (so a layout bug fails here, not only on a GPU), and
compute with zigscan's reference scan; backward passes are autograd through that reference.
``install(monkeypatch)`` puts them into ``sys.modules``; ``calls`` records which entry points ran.
"""

from __future__ import annotations

import math
import sys
import types

import torch
import torch.nn.functional as F

from zigscan.backbones.mixers.ssm_ref import selective_scan as ref_scan


def _check_scan_inputs(u, delta, A, B, C, z):
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        assert t is None or t.stride(-1) == 1, f"selective_scan_cuda: {name} needs stride 1 along L"
    assert B.dim() == 4 and C.dim() == 4 and B.shape[1] == 1, "variable B/C as (b, 1, n, L)"
    assert B.dtype == u.dtype and C.dtype == u.dtype and delta.dtype == u.dtype, "B, C, delta in u's dtype"
    assert A.dtype in (torch.float32, torch.float64), "A in the weight type"
    assert z is None or z.dtype == u.dtype


def _scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """(b, d, L) layout around the reference's (b, L, d). B, C: (b, 1, n, L)."""
    t = lambda v: None if v is None else v.transpose(1, 2)
    return t(ref_scan(t(u), t(delta), A, B.squeeze(1).transpose(1, 2), C.squeeze(1).transpose(1, 2), D, z=t(z),
                      delta_bias=delta_bias, delta_softplus=softplus))


def _autograd(fn, ins, dout):
    """Gradients of fn(*ins) for dout. Run in a fresh thread: inside a custom op's body the dispatcher excludes
    the autograd keys (thread-local state), so autograd would record nothing there."""
    from concurrent.futures import ThreadPoolExecutor

    def work():
        leaves = [None if t is None else t.detach().requires_grad_() for t in ins]
        y = fn(*leaves)
        got = torch.autograd.grad(y, [t for t in leaves if t is not None], dout)
        it = iter(got)
        return [None if t is None else next(it) for t in leaves]

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def make(calls: list[str]) -> dict[str, types.ModuleType]:
    """The stand-in modules by import name."""

    def fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        calls.append("selective_scan_fwd")
        _check_scan_inputs(u, delta, A, B, C, z)
        out = torch.empty_like(delta).copy_(_scan(u, delta, A, B, C, D, None, delta_bias, softplus))
        states = torch.zeros(u.shape[0], u.shape[1], math.ceil(u.shape[-1] / 2048), 2 * A.shape[-1],
                             dtype=A.dtype, device=u.device)
        res = [out, states]
        if z is not None:
            res.append(torch.empty_like(z).copy_(out * F.silu(z)))
        return res

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, states, out, dz, softplus, recompute_out_z):
        calls.append("selective_scan_bwd")
        _check_scan_inputs(u, delta, A, B, C, z)
        assert dout.stride(-1) == 1 and states.is_contiguous()
        grads = _autograd(lambda *t: _scan(*t, softplus), (u, delta, A, B, C, D, z, delta_bias), dout)
        du, ddelta, dA, dB, dC, dD, dz_, ddelta_bias = grads  # (in the order of the inputs)
        if dz is not None:
            dz.copy_(dz_)  # the kernel writes into the given buffer
            dz_ = dz
        res = [du, ddelta, dA, dB, dC, dD, ddelta_bias, dz_]
        if recompute_out_z:
            res.append(out * F.silu(z))
        return res

    def conv(x, weight, bias, silu):
        assert x.stride(2) == 1 or x.stride(1) == 1, "causal_conv1d: x needs stride 1 along L or D"
        assert weight.dim() == 2, "weight (D, W)"
        y = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
        return F.silu(y) if silu else y

    def conv_fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu):
        calls.append("causal_conv1d_fwd")
        assert seq_idx is None and initial_states is None and final_states_out is None
        return torch.empty_like(x).copy_(conv(x, weight, bias, silu))

    def conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial, silu):
        calls.append("causal_conv1d_bwd")
        grads = _autograd(lambda *t: conv(*t, silu), (x, weight, bias), dout)
        gx = grads[0]
        if dx is not None:
            dx.copy_(gx)
            gx = dx
        return gx, grads[1], grads[2], None

    def causal_conv1d_fn(x, weight, bias=None, activation=None, **kw):  # the public probe target
        return conv(x, weight, bias, activation in ("silu", "swish"))

    scan_mod = types.ModuleType("selective_scan_cuda")
    scan_mod.fwd, scan_mod.bwd = fwd, bwd
    conv_pkg = types.ModuleType("causal_conv1d")
    conv_pkg.causal_conv1d_fn = causal_conv1d_fn
    cpp = types.ModuleType("causal_conv1d.cpp_functions")
    cpp.causal_conv1d_fwd_function, cpp.causal_conv1d_bwd_function = conv_fwd, conv_bwd
    conv_pkg.cpp_functions = cpp
    return {"mamba_ssm": types.ModuleType("mamba_ssm"), "selective_scan_cuda": scan_mod,
            "causal_conv1d": conv_pkg, "causal_conv1d.cpp_functions": cpp}


def install(monkeypatch, *, conv1d: bool = True) -> list[str]:
    """Put the stand-ins into sys.modules (causal-conv1d only if ``conv1d``); returns the list of calls."""
    calls: list[str] = []
    for name, mod in make(calls).items():
        if name.startswith("causal_conv1d") and not conv1d:
            mod = None  # import raises ImportError, as without the package
        monkeypatch.setitem(sys.modules, name, mod)
    return calls
