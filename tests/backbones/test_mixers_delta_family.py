"""Family tests of the delta-rule mixers (``deltanet``, ``gated-deltanet``, ``rwkv7``).

* chunked references (``delta_rule_chunked``, ``dplr_chunked``) against token-by-token recurrences copied from
  fla 0.6.0's ``naive.py`` files (float64, across chunk boundaries), values and gradients;
* each mixer against a plain transcription of the upstream layer forward (fla.layers.*) that reads the
  parameters by their upstream names from the state dict and runs the naive recurrence;
* state-dict keys and shapes against the list derived from the upstream source;
* on a GPU with fla: strict state-dict load into the upstream layer, and kernel == upstream == reference.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers.delta_rule_ref import (
    delta_rule_chunked,
    delta_rule_recurrent,
    dplr_chunked,
    dplr_recurrent,
    unit_lower_solve,
)
from zigscan.backbones.mixers.deltanet import DeltaNet
from zigscan.backbones.mixers.gated_deltanet import GatedDeltaNet
from zigscan.backbones.mixers.modules import ShortConvolution, l2_normalize
from zigscan.backbones.mixers.rwkv7 import RWKV7

F64 = dict(dtype=torch.float64)
LENGTHS = [1, 63, 64, 65, 100]


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    """Max abs error relative to the scale of b (float64 comparisons)."""
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    assert err < tol, f"max rel error {err:.3e} >= {tol:.1e}"


# ----------------------------------------------------------------------------------------------------------
# naive recurrences, copied from fla 0.6.0 (ops/delta_rule/naive.py, ops/gated_delta_rule/naive.py,
# ops/generalized_delta_rule/dplr/naive.py); layouts as there
# ----------------------------------------------------------------------------------------------------------
def fla_delta_rule_recurrence(q, k, v, beta):  # [b, h, l, d]; q scaled by d_k ** -0.5
    b, h, n_tok, d_k = q.shape
    o = torch.zeros_like(v)
    S = torch.zeros(b, h, d_k, v.shape[-1]).to(v)
    q = q * (d_k ** -0.5)
    beta = beta[..., None]
    for i in range(n_tok):
        _k, _q, _v = k[:, :, i], q[:, :, i], v[:, :, i].clone()
        _v = _v - (S.clone() * _k[..., None]).sum(-2)
        _v = _v * beta[:, :, i]
        S = S.clone() + _k.unsqueeze(-1) * _v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", _q, S)
    return o


def fla_gated_delta_rule_recurrence(q, k, v, beta, g):  # [B, T, H, K]; scale K ** -0.5
    q, k, v, beta, g = (x.transpose(1, 2) for x in (q, k, v, beta, g))
    B, H, T, K = k.shape
    o = torch.zeros(B, H, T, v.shape[-1]).to(v)
    h = torch.zeros(B, H, K, v.shape[-1]).to(v)
    q = q * K ** -0.5
    for i in range(T):
        h = h.clone() * g[:, :, i].exp()[..., None, None]
        b_v = v[:, :, i].clone() - (h.clone() * k[:, :, i][..., None]).sum(-2)
        b_v = b_v * beta[:, :, i][..., None]
        h = h.clone() + k[:, :, i].unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", q[:, :, i], h)
    return o.transpose(1, 2)


def fla_dplr_recurrence(q, k, v, alpha, beta, gk, scale):  # [b, h, l, d]; fla hard-codes scale d_k ** -0.5
    b, h, n_tok, d_k = q.shape
    o = torch.zeros_like(v)
    S = torch.zeros(b, h, d_k, v.shape[-1]).to(v)
    q = q * scale
    for i in range(n_tok):
        _kv = k[:, :, i][..., None] * v[:, :, i][..., None, :] + \
            (S.clone() * alpha[:, :, i][..., None]).sum(-2, keepdim=True) * beta[:, :, i][..., None]
        S = S.clone() * gk[:, :, i].exp()[..., None] + _kv
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", q[:, :, i], S)
    return o


def bhld(*xs):
    return [x.transpose(1, 2) for x in xs]


def delta_inputs(T, B=2, H=3, K=8, V=5, seed=0, gated=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, **F64)
    k = l2_normalize(torch.randn(B, T, H, K, generator=gen, **F64))
    v = torch.randn(B, T, H, V, generator=gen, **F64)
    beta = torch.rand(B, T, H, generator=gen, **F64) * 2  # up to 2: allow_neg_eigval range
    g = -torch.rand(B, T, H, generator=gen, **F64) * 3 if gated else None
    return q, k, v, beta, g


def dplr_inputs(T, B=2, H=3, K=8, V=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, **F64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, **F64)
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen, **F64), dim=-1)
    a_gate = torch.rand(B, T, H, K, generator=gen, **F64)
    w = -0.6065306597126334 * torch.rand(B, T, H, K, generator=gen, **F64)
    return q, k, v, -kk, kk * a_gate, w


# ----------------------------------------------------------------------------------------------------------
# chunked references vs naive recurrences
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_delta_rule_chunked_matches_naive(T, chunk_size):
    q, k, v, beta, _ = delta_inputs(T)
    naive = fla_delta_rule_recurrence(*bhld(q, k, v), beta.transpose(1, 2)).transpose(1, 2)
    assert_close(delta_rule_chunked(q, k, v, beta, chunk_size=chunk_size), naive)
    assert_close(delta_rule_recurrent(q, k, v, beta), naive)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_gated_delta_rule_chunked_matches_naive(T, chunk_size):
    q, k, v, beta, g = delta_inputs(T, gated=True)
    naive = fla_gated_delta_rule_recurrence(q, k, v, beta, g)
    assert_close(delta_rule_chunked(q, k, v, beta, g, chunk_size=chunk_size), naive)
    assert_close(delta_rule_recurrent(q, k, v, beta, g), naive)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_dplr_chunked_matches_naive(T, chunk_size):
    q, k, v, a, b, w = dplr_inputs(T)
    naive = fla_dplr_recurrence(*bhld(q, k, v, a, b, w), scale=0.7).transpose(1, 2)
    assert_close(dplr_chunked(q, k, v, a, b, w, scale=0.7, chunk_size=chunk_size), naive)
    assert_close(dplr_recurrent(q, k, v, a, b, w, scale=0.7), naive)


@pytest.mark.parametrize(("T", "chunk_size"), [(65, 16), (20, 64), (64, 64)], ids=["chunks", "one-short", "one-full"])
@pytest.mark.parametrize("gated", [True, False])
def test_chunked_gradients_match_naive(T, chunk_size, gated):
    """Gradients of the multi-chunk form and of the one-chunk shortcut (T <= chunk_size) against the naive
    recurrences; the unitriangular solve is handed unmasked matrices, so its gradient masking is tested too."""
    ct = torch.randn(2, T, 3, 5, generator=torch.Generator().manual_seed(9), **F64)  # cotangent
    ins = [t.requires_grad_() for t in delta_inputs(T, gated=gated) if t is not None]
    g1 = torch.autograd.grad((delta_rule_chunked(*ins, chunk_size=chunk_size) * ct).sum(), ins)
    g2 = torch.autograd.grad((delta_rule_recurrent(*ins) * ct).sum(), ins)
    for a_, b_ in zip(g1, g2):
        assert_close(a_, b_, 1e-9)
    ins = [t.requires_grad_() for t in dplr_inputs(T)]
    g1 = torch.autograd.grad((dplr_chunked(*ins, chunk_size=chunk_size) * ct).sum(), ins)
    g2 = torch.autograd.grad((fla_dplr_recurrence(*bhld(*ins), scale=1.0).transpose(1, 2) * ct).sum(), ins)
    for a_, b_ in zip(g1, g2):
        assert_close(a_, b_, 1e-9)


@pytest.mark.parametrize("R", [1, 7, 40])
def test_unit_lower_solve_matches_solve_triangular(R):
    """``unit_lower_solve`` (explicit inverse, two-product backward) equals ``solve_triangular`` with
    ``unitriangular=True`` in values and gradients (float64): only M's strict lower triangle is read, and
    only it gets a gradient."""
    gen = torch.Generator().manual_seed(R)
    M = (torch.randn(2, 3, 9, 9, generator=gen, dtype=torch.float64) * 0.4).requires_grad_()
    b = torch.randn(2, 3, 9, R, generator=gen, dtype=torch.float64, requires_grad=True)
    du = torch.randn(2, 3, 9, R, generator=gen, dtype=torch.float64)
    u = unit_lower_solve(M, b)
    u_ref = torch.linalg.solve_triangular(M, b, upper=False, unitriangular=True)
    assert_close(u, u_ref)
    for a, r in zip(torch.autograd.grad(u, (M, b), du), torch.autograd.grad(u_ref, (M, b), du)):
        assert_close(a, r)
    dM = torch.autograd.grad(unit_lower_solve(M, b), M, du)[0]
    assert torch.all(dM.triu() == 0)


def test_gated_delta_rule_extreme_decay_is_finite_and_exact():
    """Log gates down to -200 per step (Gated DeltaNet's gate is unbounded below): pairwise decays stay finite."""
    q, k, v, beta, _ = delta_inputs(100, seed=3)
    g = -torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(3), **F64) * 200
    out = delta_rule_chunked(q.float(), k.float(), v.float(), beta.float(), g.float())
    assert torch.isfinite(out).all()
    assert_close(out.double(), fla_gated_delta_rule_recurrence(q, k, v, beta, g), 1e-4)  # float32 rounding


def test_dplr_float32_at_the_rwkv7_decay_bound():
    """Strongest RWKV-7 decay in every step and channel, chunk 64, float32: the split form stays exact."""
    q, k, v, a, b, _ = dplr_inputs(128, seed=4)
    w = torch.full_like(q, -0.6065306597126334)
    out = dplr_chunked(*(t.float() for t in (q, k, v, a, b, w)), chunk_size=64)
    assert torch.isfinite(out).all()
    assert_close(out.double(), fla_dplr_recurrence(*bhld(q, k, v, a, b, w), scale=1.0).transpose(1, 2), 1e-5)


def test_dplr_rejects_decays_that_would_overflow():
    q, k, v, a, b, _ = dplr_inputs(64)
    with pytest.raises(ValueError, match="smaller chunk_size"):
        dplr_chunked(*(t.float() for t in (q, k, v, a, b)), torch.full_like(q, -5.0).float(), chunk_size=64)


@pytest.mark.parametrize("T", [1, 2, 3, 9])
@pytest.mark.parametrize(("bias", "act"), [(False, None), (True, "silu"), (True, None), (False, "silu")])
def test_short_convolution_gradients_match_conv1d(T, bias, act):
    """The hand-written backward of the shifted-add convolution against autograd through F.conv1d, also when
    T is shorter than the kernel."""
    conv = randomize_(ShortConvolution(6, 4, bias=bias, activation=act).double())
    x = torch.randn(2, T, 6, **F64, requires_grad=True)
    ct = torch.randn(2, T, 6, **F64)
    ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3, groups=6)[..., :T].transpose(1, 2)
    ref = F.silu(ref) if act else ref
    ps = [x, *conv.parameters()]
    for a_, b_ in zip(torch.autograd.grad((conv(x) * ct).sum(), ps), torch.autograd.grad((ref * ct).sum(), ps)):
        assert_close(a_, b_)
    assert_close(conv(x), ref)


def test_short_convolution_is_fla_conv1d():
    conv = ShortConvolution(6, 4, bias=True, activation="silu").double()
    x = torch.randn(2, 9, 6, **F64)
    ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3, groups=6)[..., :9].transpose(1, 2)
    assert_close(conv(x), F.silu(ref))
    assert isinstance(conv, torch.nn.Conv1d) and conv.weight.shape == (6, 1, 4)


# ----------------------------------------------------------------------------------------------------------
# mixers vs transcriptions of the upstream layer forwards (parameters read by upstream names)
# ----------------------------------------------------------------------------------------------------------
def randomize_(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            std = p.shape[-1] ** -0.5 if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return m


def _conv(x, sd, name, act):
    """fla ShortConvolution: nn.Conv1d(groups=D, padding=W-1), tail cut (cross-correlation over a window;
    F.conv1d itself is checked in test_short_convolution_is_fla_conv1d, and is very slow in float64)."""
    w = sd[f"{name}.weight"]  # (D, 1, W)
    W = w.shape[-1]
    win = F.pad(x, (0, 0, W - 1, 0)).unfold(1, W, 1)  # (B, T, D, W): x_{t-W+1..t}
    y = (win * w[:, 0]).sum(-1)
    if f"{name}.bias" in sd:
        y = y + sd[f"{name}.bias"]
    return F.silu(y) if act else y


def _rms(o, weight, eps):
    return o * torch.rsqrt(o.square().mean(-1, keepdim=True) + eps) * weight


def upstream_deltanet(m: DeltaNet, x):
    """fla.layers.DeltaNet.forward (no mask/cache), naive delta rule."""
    sd, B, T = m.state_dict(), x.shape[0], x.shape[1]
    q, k, v = (F.linear(x, sd[f"{n}_proj.weight"]) for n in "qkv")
    if m.use_short_conv:
        q = _conv(q, sd, "q_conv1d", m.qk_activation == "silu")
        k = _conv(k, sd, "k_conv1d", m.qk_activation == "silu")
        v = _conv(v, sd, "v_conv1d", True)
    else:
        if m.qk_activation == "silu":
            q, k = F.silu(q), F.silu(k)
        v = F.silu(v)
    q, k = q.view(B, T, m.num_heads, -1), k.view(B, T, m.num_heads, -1)
    v = v.view(B, T, m.num_heads, -1)
    if m.qk_activation == "relu":
        q, k = q.relu(), k.relu()
    elif m.qk_activation == "elu":
        q, k = F.elu(q) + 1, F.elu(k) + 1
    if m.qk_norm == "sum":
        q, k = F.normalize(q, p=1, dim=-1, eps=1e-6), F.normalize(k, p=1, dim=-1, eps=1e-6)
    beta = F.linear(x, sd["b_proj.weight"]).sigmoid() if m.use_beta else torch.ones_like(q[..., 0])
    if m.allow_neg_eigval:
        beta = beta * 2
    if m.qk_norm == "l2":  # use_qk_l2norm_in_kernel: x / sqrt(sum x^2 + 1e-6)
        q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
    o = fla_delta_rule_recurrence(*bhld(q, k, v), beta.transpose(1, 2)).transpose(1, 2)
    o = _rms(o, sd["o_norm.weight"], m.norm_eps)
    if m.use_gate:
        o = o * F.silu(F.linear(x, sd["g_proj.weight"]).view_as(o))
    return F.linear(o.reshape(B, T, -1), sd["o_proj.weight"])


def upstream_gated_deltanet(m: GatedDeltaNet, x):
    """fla.layers.GatedDeltaNet.forward (no mask/cache), naive gated delta rule; GVA by repeating q/k heads."""
    sd, B, T = m.state_dict(), x.shape[0], x.shape[1]
    q, k, v = (F.linear(x, sd[f"{n}_proj.weight"]) for n in "qkv")
    if m.use_short_conv:
        q, k, v = (_conv(t, sd, f"{n}_conv1d", True) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k = q.view(B, T, m.num_heads, -1), k.view(B, T, m.num_heads, -1)
    v = v.view(B, T, m.num_v_heads, -1)
    q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
    rep = m.num_v_heads // m.num_heads
    q, k = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)
    beta = F.linear(x, sd["b_proj.weight"]).sigmoid() * (2.0 if m.allow_neg_eigval else 1.0)
    g = -sd["A_log"].exp() * F.softplus(F.linear(x, sd["a_proj.weight"]) + sd["dt_bias"])  # naive_gdn_gate
    o = fla_gated_delta_rule_recurrence(q, k, v, beta, g)
    o = _rms(o, sd["o_norm.weight"], m.norm_eps)
    if m.use_gate:
        gate = F.linear(x, sd["g_proj.weight"]).view_as(o)
        o = o * (torch.sigmoid(gate) if m.output_gate_activation == "sigmoid" else F.silu(gate))
    return F.linear(o.reshape(B, T, -1), sd["o_proj.weight"])


def upstream_rwkv7(m: RWKV7, x):
    """fla.layers.RWKV7Attention.forward at layer_idx=0 (fuse_norm=False, no mask/cache), naive DPLR."""
    sd, (B, T, _), H = m.state_dict(), x.shape, m.num_heads

    def lora(t, name, act):
        h = act(F.linear(t, sd[f"{name}.lora.0.weight"]))
        return F.linear(h, sd[f"{name}.lora.2.weight"], sd.get(f"{name}.lora.2.bias"))

    delta = torch.nn.ZeroPad2d((0, 0, 1, -1))(x) - x
    xr, xw, xk, xv, xa, xg = (torch.addcmul(x, delta, sd[f"x_{n}"]) for n in "rwkvag")
    r = F.linear(xr, sd["r_proj.weight"])
    w = -0.6065306597126334 * lora(xw, "w_lora", torch.tanh).sigmoid()
    k = F.linear(xk, sd["k_proj.weight"])
    v = F.linear(xv, sd["v_proj.weight"])
    a = lora(xa, "a_lora", lambda t: t).sigmoid()
    g = lora(xg, "g_lora", torch.sigmoid)
    kk = F.normalize((k * sd["k_k"]).view(B, T, H, -1), dim=-1, p=2.0)
    k = k.addcmul(k * (a - 1), sd["k_a"])
    r, w, k, a = (t.view(B, T, H, -1) for t in (r, w, k, a))
    v = v.view(B, T, H, -1)
    o = fla_dplr_recurrence(*bhld(r, k, v, -kk, kk * a, w), scale=1.0).transpose(1, 2)
    o = F.group_norm(o.reshape(B * T, -1), H, sd["g_norm.weight"], sd["g_norm.bias"], eps=m.head_dim * m.norm_eps)
    o = o.view(B, T, -1)
    o = (o + ((r * k * sd["r_k"]).sum(-1, keepdim=True) * v).view(B, T, -1)) * g
    return F.linear(o, sd["o_proj.weight"])


CASES = [
    ("deltanet", {}, upstream_deltanet),
    ("deltanet", dict(num_heads=2, use_gate=True, conv_bias=True, allow_neg_eigval=True), upstream_deltanet),
    ("deltanet", dict(qk_activation="relu", qk_norm="sum", use_beta=False, expand_v=2.0), upstream_deltanet),
    ("deltanet", dict(use_short_conv=False, qk_activation="elu"), upstream_deltanet),
    ("gated-deltanet", {}, upstream_gated_deltanet),
    ("gated-deltanet", dict(head_dim=16, num_heads=2, num_v_heads=4, expand_v=1.5, allow_neg_eigval=True,
                            output_gate_activation="sigmoid", conv_bias=True), upstream_gated_deltanet),
    ("gated-deltanet", dict(head_dim=16, use_gate=False, use_short_conv=False), upstream_gated_deltanet),
    ("rwkv7", {}, upstream_rwkv7),
    ("rwkv7", dict(num_heads=4, value_dim=96), upstream_rwkv7),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "kwargs", "upstream"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_mixer_matches_upstream_transcription(name, kwargs, upstream):
    m = randomize_(get_mixer(name, 64, impl="reference", **kwargs).double(), seed=1)
    x = torch.randn(2, 70, 64, generator=torch.Generator().manual_seed(7), **F64)  # crosses chunk edge 64
    want = upstream(m, x)
    assert want.abs().max() > 1e-3  # the comparison is not between zeros
    assert_close(m(x), want)


# ----------------------------------------------------------------------------------------------------------
# state-dict keys and shapes (derived from fla 0.6.0 layers/*.py, default configurations at d_model=192)
# ----------------------------------------------------------------------------------------------------------
EXPECTED_KEYS = {
    "deltanet": [  # num_heads=4, expand_k=expand_v=1, use_beta, short convs, no gate
        ("q_proj.weight", (192, 192)), ("k_proj.weight", (192, 192)), ("v_proj.weight", (192, 192)),
        ("b_proj.weight", (4, 192)), ("q_conv1d.weight", (192, 1, 4)), ("k_conv1d.weight", (192, 1, 4)),
        ("v_conv1d.weight", (192, 1, 4)), ("o_norm.weight", (48,)), ("o_proj.weight", (192, 192)),
    ],
    "gated-deltanet": [  # head_dim=64, num_heads=round(0.75 * 192 / 64)=2, expand_v=2, gate, short convs
        ("A_log", (2,)), ("dt_bias", (2,)),
        ("q_proj.weight", (128, 192)), ("k_proj.weight", (128, 192)), ("v_proj.weight", (256, 192)),
        ("a_proj.weight", (2, 192)), ("b_proj.weight", (2, 192)), ("q_conv1d.weight", (128, 1, 4)),
        ("k_conv1d.weight", (128, 1, 4)), ("v_conv1d.weight", (256, 1, 4)), ("g_proj.weight", (256, 192)),
        ("o_norm.weight", (128,)), ("o_proj.weight", (192, 256)),
    ],
    "rwkv7": [  # head_dim=64 (3 heads), LoRA ranks w=32, a=32, g=64 as upstream's rule, layer_idx=0 (no v_lora)
        ("x_r", (1, 1, 192)), ("x_w", (1, 1, 192)), ("x_k", (1, 1, 192)), ("x_v", (1, 1, 192)),
        ("x_a", (1, 1, 192)), ("x_g", (1, 1, 192)), ("k_k", (192,)), ("k_a", (192,)), ("r_k", (3, 64)),
        ("r_proj.weight", (192, 192)), ("k_proj.weight", (192, 192)), ("v_proj.weight", (192, 192)),
        ("o_proj.weight", (192, 192)),
        ("w_lora.lora.0.weight", (32, 192)), ("w_lora.lora.2.weight", (192, 32)), ("w_lora.lora.2.bias", (192,)),
        ("a_lora.lora.0.weight", (32, 192)), ("a_lora.lora.2.weight", (192, 32)), ("a_lora.lora.2.bias", (192,)),
        ("g_lora.lora.0.weight", (64, 192)), ("g_lora.lora.2.weight", (192, 64)),
        ("g_norm.weight", (192,)), ("g_norm.bias", (192,)),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_state_dict_keys_and_shapes_match_upstream(name):
    sd = get_mixer(name, 192, impl="reference").state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == EXPECTED_KEYS[name]


def test_gated_deltanet_gva_and_gate_keys():
    sd = get_mixer("gated-deltanet", 64, impl="reference", head_dim=16, num_heads=2, num_v_heads=4,
                   use_gate=False).state_dict()
    assert "g_proj.weight" not in sd and sd["v_proj.weight"].shape == (4 * 32, 64)
    assert sd["a_proj.weight"].shape == (4, 64) and sd["o_norm.weight"].shape == (32,)


# ----------------------------------------------------------------------------------------------------------
# initialisation and validation
# ----------------------------------------------------------------------------------------------------------
def test_upstream_initialisation():
    m = get_mixer("rwkv7", 128, impl="reference", num_hidden_layers=12)
    assert torch.all(m.o_proj.weight == 0) and torch.all(m.k_a == 1.02) and torch.all(m.r_k == -0.04)
    assert torch.allclose(m.g_norm.weight, torch.full((128,), (1 / 12) ** 0.7))
    assert m.x_r[0, 0, 0] == 1 and 0 < m.x_r[0, 0, -1] < 0.01  # 1 - (n / D) ** 0.2
    w = m.k_proj.weight.double()  # orthogonal, gain 0.1
    assert torch.allclose(w @ w.T, 0.01 * torch.eye(128, dtype=torch.float64), atol=1e-5)
    assert torch.all(m.w_lora.lora[0].weight == 0)
    g = get_mixer("gated-deltanet", 128, impl="reference")
    assert torch.all(g.A_log.exp() <= 16) and torch.all(g.A_log.exp() > 0)
    dt = F.softplus(g.dt_bias)
    assert torch.all(dt >= 1e-3 - 1e-6) and torch.all(dt <= 0.1 + 1e-6)
    assert g.A_log._no_weight_decay and g.dt_bias._no_weight_decay


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("deltanet", dict(num_heads=5), "num_heads=5 must divide"),
    ("deltanet", dict(expand_k=0.3), "must be integers"),
    ("deltanet", dict(qk_activation="gelu"), "qk_activation"),
    ("gated-deltanet", dict(num_heads=2, num_v_heads=3), "multiple of"),
    ("gated-deltanet", dict(head_dim=16, expand_v=1.1), "must be an integer"),
    ("rwkv7", dict(head_dim=48), "head_dim=48 must divide"),
    ("rwkv7", dict(num_heads=4, value_dim=30), "value_dim=30"),
    ("rwkv7", dict(num_hidden_layers=1), "num_hidden_layers"),
])
def test_bad_configuration_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_mixer(name, 64, impl="reference", **kwargs)


def test_reference_bf16_and_long_sequence_finite():
    for name in ("deltanet", "gated-deltanet", "rwkv7"):
        m = randomize_(get_mixer(name, 64, impl="reference"), seed=2).to(torch.bfloat16)
        y = m(torch.randn(1, 300, 64, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# ----------------------------------------------------------------------------------------------------------
# GPU: kernels and upstream layers (skipped without CUDA + fla)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet", "rwkv7"])
def test_kernel_matches_upstream_and_reference(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("fla", reason="needs flash-linear-attention (pip install 'zigscan[fla]')")
    torch.manual_seed(0)
    m = randomize_(get_mixer(name, 256, impl="kernel"), seed=3).cuda()
    up = m.build_upstream().cuda()
    up.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 200, 256, device="cuda", requires_grad=True)
    y_kernel = m(x)
    y_up = up(x)[0]
    y_ref = m.forward_reference(x)
    scale = y_ref.abs().max().item()
    assert (y_kernel - y_up).abs().max().item() <= 2e-3 * max(1.0, scale)
    assert (y_kernel - y_ref).abs().max().item() <= 1e-2 * max(1.0, scale)
    gk, = torch.autograd.grad(y_kernel.square().sum(), x)
    gr, = torch.autograd.grad(y_ref.square().sum(), x)
    assert (gk - gr).abs().max().item() <= 2e-2 * max(1.0, gr.abs().max().item())
    assert math.isfinite(gk.sum().item())


# ----------------------------------------------------------------------------------------------------------
# kernel wiring on CPU, through a stand-in ``fla`` whose functions have the real 0.6.0 signatures
# (copied from fla/ops/*, fla/modules/*) and naive bodies: catches wrong argument names, layouts, mode switches
# ----------------------------------------------------------------------------------------------------------
def _fake_fla(calls: list[str]) -> dict[str, types.ModuleType]:
    def l2(t):
        return t / torch.sqrt(t.square().sum(-1, keepdim=True) + 1e-6)

    def logged(fn):  # records the call; fn.__wrapped__ runs it unrecorded (one fake calling another)
        def wrapper(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__wrapped__ = fn.__name__, fn
        return wrapper

    @logged
    def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                         use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
        assert not kwargs and initial_state is None and scale is None
        if use_qk_l2norm_in_kernel:
            q, k = l2(q), l2(k)
        return fla_delta_rule_recurrence(*bhld(q, k, v), beta.transpose(1, 2)).transpose(1, 2), None

    def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False,
                                   use_qk_l2norm_in_kernel=False, cu_seqlens=None):
        calls.append("fused_recurrent_delta_rule")
        return chunk_delta_rule.__wrapped__(q, k, v, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)

    @logged
    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                               allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                               chunk_indices=None, cp_context=None, **kwargs):
        assert set(kwargs) <= {"use_gate_in_kernel", "A_log", "dt_bias", "chunk_size"} and scale is None
        if use_qk_l2norm_in_kernel:
            q, k = l2(q), l2(k)
        if use_beta_sigmoid_in_kernel:
            beta = beta.sigmoid() * (2.0 if allow_neg_eigval else 1.0)
        if kwargs.get("use_gate_in_kernel"):
            g = -kwargs["A_log"].exp() * F.softplus(g + kwargs["dt_bias"])
        rep = v.shape[2] // q.shape[2]  # GVA
        q, k = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)
        return fla_gated_delta_rule_recurrence(q, k, v, beta, g), None

    def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                         initial_state=None, output_final_state=False,
                                         use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None,
                                         dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                                         state_v_first=False, cu_seqlens=None, **kwargs):
        calls.append("fused_recurrent_gated_delta_rule")
        return chunk_gated_delta_rule.__wrapped__(q, k, v, g, beta, scale, initial_state, output_final_state,
                                      use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                                      use_gate_in_kernel=use_gate_in_kernel, A_log=A_log, dt_bias=dt_bias)

    def causal_conv1d(x, weight=None, bias=None, residual=None, initial_state=None, output_final_state=False,
                      activation=None, backend="triton", cu_seqlens=None, cu_seqlens_cpu=None, chunk_indices=None,
                      cp_context=None, **kwargs):
        assert weight.dim() == 2 and activation in (None, "silu", "swish")
        sd = {"c.weight": weight[:, None]} | ({"c.bias": bias} if bias is not None else {})
        return _conv(x, sd, "c", activation is not None), None

    def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                    cu_seqlens_cpu=None, safe_gate=False, chunk_size=None, disable_recompute=False,
                    cp_context=None, lower_bound=None):
        calls.append("chunk_rwkv7")
        assert lower_bound is None or bool((w >= lower_bound).all())
        return fla_dplr_recurrence(*bhld(r, k, v, a, b, w), scale=scale).transpose(1, 2), None

    def fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                                  reverse=False, cu_seqlens=None):
        calls.append("fused_mul_recurrent_rwkv7")
        return fla_dplr_recurrence(*bhld(r, k, v, -kk, kk * a, w), scale=scale).transpose(1, 2), None

    def token_shift(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None):
        y = torch.nn.ZeroPad2d((0, 0, 1, -1))(x) - x
        return (y, None) if output_cache else y

    def fused_addcmul_rwkv7(hidden_states, delta, xr, xw, xk, xv, xa, xg=None):
        return tuple(torch.addcmul(hidden_states, delta, mu) for mu in (xr, xw, xk, xv, xa, xg))

    def fused_k_rwkv7(k, a, ka, cu_seqlens=None, cu_seqlens_cpu=None):
        return k.addcmul(k * (a - 1), ka)

    def gate_output_correction(o, r, k, r_k, v, g):
        return (o + ((r * k * r_k[None, None]).sum(-1, keepdim=True) * v).view(o.shape)) * g

    mods = {}
    for name, fns in {
        "fla": [], "fla.ops": [], "fla.modules": [],
        "fla.ops.delta_rule": [chunk_delta_rule, fused_recurrent_delta_rule],
        "fla.ops.gated_delta_rule": [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule],
        "fla.modules.causal_conv1d": [causal_conv1d],
        "fla.modules.token_shift": [token_shift],
        "fla.ops.rwkv7": [chunk_rwkv7, fused_mul_recurrent_rwkv7],
        "fla.ops.rwkv7.fused_addcmul": [fused_addcmul_rwkv7],
        "fla.ops.rwkv7.fused_k_update": [fused_k_rwkv7],
        "fla.ops.rwkv7.gate_output_correction": [gate_output_correction],
    }.items():
        mods[name] = types.ModuleType(name)
        for fn in fns:
            setattr(mods[name], fn.__name__, fn)
    return mods


@pytest.mark.parametrize(("name", "kwargs", "ops"), [
    ("deltanet", {}, ["fused_recurrent_delta_rule", "chunk_delta_rule"]),
    ("deltanet", dict(use_gate=True, qk_activation="relu", conv_bias=True),
     ["fused_recurrent_delta_rule", "chunk_delta_rule"]),
    ("gated-deltanet", dict(head_dim=16, num_heads=2, num_v_heads=4, allow_neg_eigval=True),
     ["fused_recurrent_gated_delta_rule", "chunk_gated_delta_rule"]),
    ("rwkv7", {}, ["fused_mul_recurrent_rwkv7", "chunk_rwkv7"]),
])
def test_kernel_wiring_with_stand_in_fla(monkeypatch, name, kwargs, ops):
    calls: list[str] = []
    for mod_name, mod in _fake_fla(calls).items():
        monkeypatch.setitem(sys.modules, mod_name, mod)
    m = randomize_(get_mixer(name, 64, impl="reference", **kwargs).double(), seed=5).eval()
    for T in (40, 70):  # short no-grad eval call: recurrent kernel; long: chunk kernel (upstream's switch)
        x = torch.randn(2, T, 64, generator=torch.Generator().manual_seed(T), **F64)
        with torch.no_grad():
            assert_close(m.forward_kernel(x), m.forward_reference(x))
    assert [c for c in calls if c in ops] == ops
