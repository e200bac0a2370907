"""Mamba-family tests: chunked scans vs token loops, the reference block vs upstream's slow-path maths,
upstream parameter layout, bimamba / parallel-K wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers.mamba2 import Mamba2
from zigscan.backbones.mixers.ssm_ref import (
    causal_conv1d,
    selective_scan,
    selective_scan_naive,
    ssd_one_chunk,
    ssd_scan,
    ssd_scan_naive,
)

F64 = dict(rtol=1e-10, atol=1e-10)
LENGTHS = [1, 5, 31, 32, 33, 63, 64, 100]


def _selective_inputs(L, d=6, n=4, b=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return dict(
        u=r(b, L, d), delta=r(b, L, d) * scale, A=-torch.rand(d, n, generator=g, dtype=torch.float64) * 8,
        B=r(b, L, n), C=r(b, L, n), D=r(d), z=r(b, L, d), delta_bias=r(d),
    )


# ---------------------------------------------------------------------------------------------------
# scans
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_selective_scan_matches_token_loop_values_and_grads(L, chunk):
    args = {k: v.requires_grad_() for k, v in _selective_inputs(L).items()}
    y = selective_scan(**args, delta_softplus=True, chunk_size=chunk)
    y_ref = selective_scan_naive(**args, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(args.values()), gy)
    grads_ref = torch.autograd.grad(y_ref, list(args.values()), gy)
    for name, g, g_ref in zip(args, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_selective_scan_gradcheck():
    args = _selective_inputs(11, d=3, n=2, b=1)
    args = {k: v.requires_grad_() for k, v in args.items()}
    names = list(args)
    fn = lambda *vals: selective_scan(**dict(zip(names, vals)), delta_softplus=True, chunk_size=4)
    assert torch.autograd.gradcheck(fn, tuple(args.values()))


def test_selective_scan_is_stable_for_huge_decays():
    """dt*A of -1000 per token: segment sums stay <= 0, nothing overflows, chunked == loop."""
    args = _selective_inputs(70, scale=300.0)
    args["A"] = args["A"] * 10
    y = selective_scan(**args, delta_softplus=True)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, selective_scan_naive(**args, delta_softplus=True), **F64)
    y32 = selective_scan(**{k: v.float() for k, v in args.items()}, delta_softplus=True)
    assert torch.isfinite(y32).all()


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("method", ["loop", "auto"])
def test_selective_scan_loop_matches_token_loop_values_and_grads(L, method):
    """The token loop with its hand-written backward (what "auto" picks at these sizes) vs the naive twin."""
    args = {k: v.requires_grad_() for k, v in _selective_inputs(L, d=5, n=3, b=3).items()}
    y = selective_scan(**args, delta_softplus=True, method=method)
    y_ref = selective_scan_naive(**args, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(args.values()), gy)
    grads_ref = torch.autograd.grad(y_ref, list(args.values()), gy)
    for name, g, g_ref in zip(args, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("L", [1, 2, 7])
def test_selective_scan_loop_gradcheck(L):
    args = {k: v.requires_grad_() for k, v in _selective_inputs(L, d=3, n=2, b=2).items()}
    names = list(args)
    fn = lambda *vals: selective_scan(**dict(zip(names, vals)), delta_softplus=True, method="loop")
    assert torch.autograd.gradcheck(fn, tuple(args.values()))


def test_selective_scan_loop_float32_and_huge_decays():
    """float32 inputs give float32 results close to the float64 loop; decays that underflow stay finite."""
    args = _selective_inputs(70, scale=300.0)
    args["A"] = args["A"] * 10
    y = selective_scan(**args, delta_softplus=True, method="loop")
    torch.testing.assert_close(y, selective_scan_naive(**args, delta_softplus=True), **F64)
    args = _selective_inputs(49)
    y32 = selective_scan(**{k: v.float() for k, v in args.items()}, delta_softplus=True, method="loop")
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), selective_scan_naive(**args, delta_softplus=True), rtol=1e-4, atol=1e-4)


def test_selective_scan_auto_takes_the_chunked_scan_when_the_loop_would_keep_too_much(monkeypatch):
    from zigscan.backbones.mixers import ssm_ref

    monkeypatch.setenv("ZIGSCAN_NATIVE_SCAN", "0")  # the choice among the pure-PyTorch paths
    calls = []
    monkeypatch.setattr(ssm_ref._SelectiveScan, "apply", lambda *a: calls.append("chunk") or a[0] * 0)
    monkeypatch.setattr(ssm_ref._SelectiveScanLoop, "apply", lambda *a: calls.append("loop") or a[0] * 0)
    args = {k: v.requires_grad_() for k, v in _selective_inputs(9).items()}  # with autograd: the loop keeps states
    selective_scan(**args)
    monkeypatch.setattr(ssm_ref, "LOOP_MAX_SAVED_BYTES", 100)
    selective_scan(**args)
    selective_scan(**args, method="loop")
    monkeypatch.setattr(ssm_ref, "LOOP_MAX_SAVED_BYTES", 2**30)
    monkeypatch.setattr(ssm_ref, "LOOP_MAX_LENGTH", 8)  # 9 tokens, state 2 x 6 x 4 < LOOP_MIN_STATE
    selective_scan(**args)
    assert calls == ["loop", "chunk", "loop", "chunk"]
    with pytest.raises(ValueError, match="method"):
        selective_scan(**args, method="fast")


@pytest.mark.parametrize("L", [1, 7, 49])
@pytest.mark.parametrize("state_elements", [1, 48, 2**19])  # blocks of 1 and 2 batch elements, and one block
def test_selective_scan_without_autograd_matches_the_token_loop(monkeypatch, L, state_elements):
    """Sampling path: no graph, state updated in place, batch walked in blocks (5 = 2 + 2 + 1 with 48 =
    2 x n x d elements); the same values as the naive loop and as the path with autograd."""
    from zigscan.backbones.mixers import ssm_ref

    monkeypatch.setattr(ssm_ref, "INFERENCE_STATE_ELEMENTS", state_elements)
    monkeypatch.setattr(ssm_ref._SelectiveScanLoop, "apply", lambda *a: pytest.fail("autograd loop under no_grad"))
    args = _selective_inputs(L, b=5, scale=3.0)
    with torch.no_grad():
        y = selective_scan(**args, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_naive(**args, delta_softplus=True), **F64)
    y32 = selective_scan(**{k: v.float() for k, v in args.items()}, delta_softplus=True, method="loop")
    assert y32.dtype == torch.float32 and not y32.requires_grad
    torch.testing.assert_close(y32.double(), y, rtol=1e-4, atol=1e-4)


def test_selective_scan_without_autograd_keeps_nothing_so_auto_never_falls_back_for_memory(monkeypatch):
    from zigscan.backbones.mixers import ssm_ref

    monkeypatch.setenv("ZIGSCAN_NATIVE_SCAN", "0")  # the choice among the pure-PyTorch paths
    calls = []
    monkeypatch.setattr(ssm_ref._SelectiveScan, "apply", lambda *a: calls.append("chunk") or a[0] * 0)
    monkeypatch.setattr(ssm_ref, "_scan_loop_inference", lambda *a: calls.append("inference") or a[0] * 0)
    monkeypatch.setattr(ssm_ref, "LOOP_MAX_SAVED_BYTES", 100)
    args = _selective_inputs(9)
    with torch.no_grad():
        selective_scan(**args)
    selective_scan(**args)  # no input requires grad: nothing to keep either
    selective_scan(**{k: v.requires_grad_() for k, v in args.items()})  # states would exceed the limit
    assert calls == ["inference", "inference", "chunk"]


@pytest.mark.parametrize("L", [1, 3, 49])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_equals_conv1d(L, bias):
    torch.manual_seed(L)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=bias).double()
    x = torch.randn(2, L, 6, dtype=torch.float64, requires_grad=True)
    y = causal_conv1d(x, conv.weight, conv.bias, silu=True)
    y_ref = F.silu(conv(x.transpose(1, 2))[..., :L]).transpose(1, 2)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for g, g_ref in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(y_ref, params, gy)):
        torch.testing.assert_close(g, g_ref, **F64)


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_ssd_scan_matches_token_loop(L, chunk):
    g = torch.Generator().manual_seed(L)
    b, h, p, ng, n = 2, 4, 3, 2, 5
    x = torch.randn(b, L, h, p, generator=g, dtype=torch.float64, requires_grad=True)
    dt = F.softplus(torch.randn(b, L, h, generator=g, dtype=torch.float64)).requires_grad_()
    A = (-torch.rand(h, generator=g, dtype=torch.float64) * 8).requires_grad_()
    B = torch.randn(b, L, ng, n, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(b, L, ng, n, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(h, generator=g, dtype=torch.float64, requires_grad=True)
    y = ssd_scan(x, dt, A, B, C, D, chunk_size=chunk)
    y_ref = ssd_scan_naive(x, dt, A, B, C, D)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    for g1, g2 in zip(torch.autograd.grad(y, (x, dt, A, B, C, D), gy), torch.autograd.grad(y_ref, (x, dt, A, B, C, D), gy)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("L", [1, 17, 64])
@pytest.mark.parametrize("ng", [1, 2, 4])
@pytest.mark.parametrize("D_shape", ["h", "hp", None])
def test_ssd_one_chunk_matches_token_loop(L, ng, D_shape):
    """Mamba2's one-chunk SSD (one [L, L] matrix per head, dt and D folded in) equals the token loop:
    values and the gradients of every input (float64)."""
    g = torch.Generator().manual_seed(L * 7 + ng)
    b, h, p, n = 2, 4, 3, 5
    x = torch.randn(b, L, h, p, generator=g, dtype=torch.float64, requires_grad=True)
    dt = F.softplus(torch.randn(b, L, h, generator=g, dtype=torch.float64)).requires_grad_()
    A = (-torch.rand(h, generator=g, dtype=torch.float64) * 8).requires_grad_()
    B = torch.randn(b, L, ng, n, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(b, L, ng, n, generator=g, dtype=torch.float64, requires_grad=True)
    D = None if D_shape is None else torch.randn(*((h,) if D_shape == "h" else (h, p)), generator=g,
                                                  dtype=torch.float64, requires_grad=True)
    y, y_ref = ssd_one_chunk(x, dt, A, B, C, D), ssd_scan_naive(x, dt, A, B, C, D)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    leaves = [t for t in (x, dt, A, B, C, D) if t is not None]
    for g1, g2 in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y_ref, leaves, gy)):
        torch.testing.assert_close(g1, g2, **F64)


# ---------------------------------------------------------------------------------------------------
# the blocks vs upstream's maths and layout
# ---------------------------------------------------------------------------------------------------


def _upstream_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm selective_scan_ref, (B, D, L) layout, real A, variable B/C (transcribed)."""
    delta = F.softplus(delta + delta_bias[..., None])
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2) + u * D[:, None]
    return out * F.silu(z)


def _upstream_mamba_slow_path(m, hidden_states):
    """mamba_simple.Mamba.forward without causal_conv1d and inference cache (transcribed)."""
    batch, seqlen, dim = hidden_states.shape
    xz = (m.in_proj.weight @ hidden_states.reshape(-1, dim).t()).reshape(-1, batch, seqlen).transpose(0, 1)
    A = -torch.exp(m.A_log.double())
    x, z = xz.chunk(2, dim=1)
    x = F.silu(m.conv1d(x)[..., :seqlen])
    x_dbl = m.x_proj(x.transpose(1, 2).reshape(-1, x.shape[1]))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (m.dt_proj.weight @ dt.t()).reshape(-1, batch, seqlen).transpose(0, 1)
    B = B.reshape(batch, seqlen, -1).transpose(1, 2)
    C = C.reshape(batch, seqlen, -1).transpose(1, 2)
    y = _upstream_selective_scan_ref(x, dt, A, B, C, m.D.double(), z, m.dt_proj.bias.double())
    return m.out_proj(y.transpose(1, 2))


def test_mamba_reference_matches_upstream_slow_path():
    torch.manual_seed(0)
    m = get_mixer("mamba", 32, impl="reference").double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    torch.testing.assert_close(m(x), _upstream_mamba_slow_path(m, x), **F64)


def test_mamba_parameters_match_upstream_layout():
    d, di, n, r = 64, 128, 16, math.ceil(64 / 16)
    m = get_mixer("mamba", d)
    expected = {
        "in_proj.weight": (2 * di, d), "conv1d.weight": (di, 1, 4), "conv1d.bias": (di,),
        "x_proj.weight": (r + 2 * n, di), "dt_proj.weight": (di, r), "dt_proj.bias": (di,),
        "A_log": (di, n), "D": (di,), "out_proj.weight": (d, di),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    # upstream init: A = 1..n per channel, D = 1, softplus(dt bias) in [dt_min, dt_max]
    torch.testing.assert_close(m.A_log.exp(), torch.arange(1, n + 1.0).repeat(di, 1))
    assert torch.all(m.D == 1)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def _upstream_mamba2_slow_path(m, u):
    """mamba2.Mamba2.forward, use_mem_eff_path=False, no causal_conv1d, rmsnorm (transcribed; the scan
    by the token loop)."""
    L = u.shape[1]
    zxbcdt = m.in_proj(u)
    z, xBC, dt = torch.split(zxbcdt, [m.d_ssm, m.d_ssm + 2 * m.ngroups * m.d_state, m.nheads], dim=-1)
    xBC = F.silu(m.conv1d(xBC.transpose(1, 2)).transpose(1, 2)[:, : -(m.d_conv - 1)])
    x, B, C = torch.split(xBC, [m.d_ssm, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
    dt = F.softplus(dt + m.dt_bias)
    y = ssd_scan_naive(x.reshape(*x.shape[:2], m.nheads, m.headdim), dt, -torch.exp(m.A_log),
                       B.reshape(*B.shape[:2], m.ngroups, -1), C.reshape(*C.shape[:2], m.ngroups, -1), m.D)
    y = y.reshape(*y.shape[:2], -1) * F.silu(z)  # norm_before_gate=False
    yg = y.reshape(*y.shape[:2], m.ngroups, -1)
    y = (yg * torch.rsqrt(yg.square().mean(-1, keepdim=True) + 1e-5)).reshape(*y.shape[:2], -1) * m.norm.weight
    assert y.shape[1] == L
    return m.out_proj(y)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_reference_matches_upstream_slow_path(ngroups):
    torch.manual_seed(0)
    m = Mamba2(64, "reference", d_state=16, headdim=32, ngroups=ngroups).double()
    with torch.no_grad():
        m.norm.weight.add_(torch.randn_like(m.norm.weight) * 0.1)
    x = torch.randn(2, 70, 64, dtype=torch.float64)
    torch.testing.assert_close(m(x), _upstream_mamba2_slow_path(m, x), **F64)


@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 49, 64])
def test_mamba2_one_chunk_path_matches_upstream_slow_path(ngroups, L):
    """L <= SSD_CHUNK: the one-chunk SSD (scores C B^T once per group, grouped_one_chunk_attn) equals the
    token loop in values and in the gradients of the input and every parameter (float64)."""
    torch.manual_seed(L + ngroups)
    m = Mamba2(64, "reference", d_state=16, headdim=32, ngroups=ngroups).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, L, 64, dtype=torch.float64, requires_grad=True)
    y, y_ref = m(x), _upstream_mamba2_slow_path(m, x)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    leaves = [x, *m.parameters()]
    for g1, g2 in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y_ref, leaves, gy)):
        torch.testing.assert_close(g1, g2, **F64)


def test_mamba2_parameters_match_upstream_layout():
    d, di, n, hd = 128, 256, 128, 64
    h = di // hd
    m = get_mixer("mamba2", d)
    expected = {
        "in_proj.weight": (2 * di + 2 * n + h, d), "conv1d.weight": (di + 2 * n, 1, 4),
        "conv1d.bias": (di + 2 * n,), "dt_bias": (h,), "A_log": (h,), "D": (h,), "norm.weight": (di,),
        "out_proj.weight": (d, di),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert torch.all((m.A_log.exp() >= 1) & (m.A_log.exp() <= 16))


def test_mamba2_small_widths():
    assert get_mixer("mamba2", 16).headdim == 32  # d_inner=32 < 64: one head of 32
    with pytest.raises(ValueError, match="headdim"):
        get_mixer("mamba2", 48)  # d_inner=96 is not a multiple of 64
    assert get_mixer("mamba2", 48, headdim=32).nheads == 3


# ---------------------------------------------------------------------------------------------------
# bimamba and parallel-K
# ---------------------------------------------------------------------------------------------------


def test_bimamba_has_two_cores_and_sees_the_future():
    torch.manual_seed(0)
    bi = get_mixer("bimamba", 32)
    keys = set(bi.state_dict())
    for k in ("conv1d.weight", "x_proj.weight", "dt_proj.weight", "A_log", "D"):
        b_key = k.replace("conv1d", "conv1d_b").replace("x_proj", "x_proj_b").replace("dt_proj", "dt_proj_b")
        b_key = {"A_log": "A_b_log", "D": "D_b"}.get(k, b_key)
        assert k in keys and b_key in keys
    x = torch.randn(2, 20, 32)
    x2 = x.clone()
    x2[:, -1] += 1
    assert not torch.allclose(bi(x)[:, 0], bi(x2)[:, 0])  # token 0 sees the last token
    # the forward half alone is exactly a Mamba with the shared and forward parameters
    mamba = get_mixer("mamba", 32)
    mamba.load_state_dict({k: v for k, v in bi.state_dict().items() if "_b" not in k})
    with torch.no_grad():
        bi.D_b.zero_()
        bi.x_proj_b.weight.zero_()  # B = C = 0: the backward scan outputs 0
    xi, z = bi.in_proj(x).chunk(2, -1)
    from zigscan.backbones.mixers.mamba import core_reference

    torch.testing.assert_close(bi(x), bi.out_proj(core_reference(bi, "", xi, z) / 2))
    assert not torch.allclose(bi(x), mamba(x))


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_parallel_k_has_k_distinct_parameter_sets(k):
    m = get_mixer(f"parallel-{k}", 32)
    assert len(m.mambas) == k
    weights = [mm.in_proj.weight for mm in m.mambas]
    assert len({w.data_ptr() for w in weights}) == k
    for i in range(k):
        for j in range(i):
            assert not torch.equal(weights[i], weights[j])
    single = get_mixer("mamba", 32)
    assert sum(p.numel() for p in m.parameters()) == k * sum(p.numel() for p in single.parameters())


def test_parallel_uses_zigzag_paths_over_the_grid():
    from zigscan.scanpaths import get_scanpath

    torch.manual_seed(0)
    H, W = 4, 6
    m = get_mixer("parallel-3", 32, shape=(H, W))
    x = torch.randn(2, H * W, 32)
    expected = 0
    for k, mm in enumerate(m.mambas):
        path = get_scanpath(f"zigzag-s{k}")
        expected = expected + mm(x[:, path.order((H, W))])[:, path.inverse((H, W))]
    torch.testing.assert_close(m(x), expected / 3)
    # the same through the forward kwarg and the attribute; no shape -> forward / reverse
    m.shape = None
    torch.testing.assert_close(m(x, shape=(H, W)), expected / 3)
    no_grid = (m.mambas[0](x) + m.mambas[1](x.flip(1)).flip(1) + m.mambas[2](x)) / 3
    torch.testing.assert_close(m(x), no_grid)
    with pytest.raises(ValueError, match="prod"):
        m(x, shape=(5, 5))


# The kernel paths' wiring (fused and PyTorch conv1d, mamba / bimamba / parallel-K, outputs and all gradients,
# compiled with no graph break) is tested in test_mamba_ops.py with stand-ins of the CUDA entry points.
