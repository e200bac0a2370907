"""Family tests of the fla gated-linear-attention mixers: ``gla``, ``rwkv6``, ``hgrn2``, ``simple-gla``,
``retnet``.

* the chunked reference op equals the token-by-token recurrence (float64, tight), across chunk
  boundaries, with strong decays, initial/final states and gradients;
* each mixer equals a plain transcription of the upstream fla layer forward (fla 0.6.0,
  fla/layers/{gla,rwkv6,hgrn2,simple_gla,multiscale_retention}.py) run through the naive op;
* state-dict keys and shapes equal the upstream layer's (list written out from the upstream source);
* GPU only: our state dict loads (strict) into ``build_upstream()`` and both give the same output.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers.linear_attn_ref import chunk_diag_linear_attn, naive_diag_linear_attn

F64_TOL = dict(rtol=1e-10, atol=1e-10)  # float64 reference vs recurrence: only summation order differs
NAMES = ["gla", "rwkv6", "hgrn2", "simple-gla", "retnet"]


def naive(q, k, v, g, **kw):
    return naive_diag_linear_attn(q, k, v, g, **kw)[0]


def _inputs(B, T, H, K, V, *, strong: bool, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=dtype))  # mild: ~[-3, 0]
    if strong:  # some channels/tokens forget almost everything: log-decays down to -200 per step
        g = g * torch.where(torch.rand(B, T, H, K, generator=gen, dtype=dtype) < 0.3, 100.0, 1.0)
    return q, k, v, g


# --------------------------------------------------------------------------- the op
@pytest.mark.parametrize("T", [1, 63, 64, 65, 100])
@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_matches_recurrence(T, bonus, chunk_size):
    B, H, K, V = 2, 3, 5, 4
    q, k, v, g = _inputs(B, T, H, K, V, strong=True, seed=T)
    u = torch.randn(H, K, dtype=torch.float64) if bonus else None
    h0 = torch.randn(B, H, K, V, dtype=torch.float64)
    o, ht = chunk_diag_linear_attn(q, k, v, g, u=u, scale=0.7, initial_state=h0, output_final_state=True,
                                   chunk_size=chunk_size)
    o_ref, ht_ref = naive_diag_linear_attn(q, k, v, g, u=u, scale=0.7, initial_state=h0, output_final_state=True)
    assert o.shape == (B, T, H, V) and o.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, **F64_TOL)
    torch.testing.assert_close(ht, ht_ref, **F64_TOL)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
def test_chunk_gradients_match_recurrence(bonus):
    B, T, H, K, V = 1, 37, 2, 4, 3
    args = [x.requires_grad_() for x in _inputs(B, T, H, K, V, strong=True, seed=1)]
    u = torch.randn(H, K, dtype=torch.float64, requires_grad=True) if bonus else None
    w = torch.randn(B, T, H, V, dtype=torch.float64)
    leaves = args + ([u] if bonus else [])
    g1 = torch.autograd.grad((chunk_diag_linear_attn(*args, u=u, chunk_size=8)[0] * w).sum(), leaves)
    g2 = torch.autograd.grad((naive(*args, u=u) * w).sum(), leaves)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **F64_TOL)


def test_chunk_default_scale_and_state_free_start():
    q, k, v, g = _inputs(1, 20, 2, 9, 3, strong=False)
    torch.testing.assert_close(chunk_diag_linear_attn(q, k, v, g)[0], naive(q, k, v, g, scale=9**-0.5), **F64_TOL)


@pytest.mark.parametrize("strength, tol", [(1e2, 1e-4), (1e4, 5e-2)])
def test_chunk_is_stable_for_extreme_decays_in_float32(strength, tol):
    """Log-decays of -1e2 or -1e4 per step (forget everything) must give finite values and gradients close
    to the float64 recurrence; a reference that exponentiates positive cumulative sums overflows here.
    At -1e4 per step the float32 in-chunk cumsum (~1e5) keeps ~1e-2 absolute precision (as in fla's
    kernels), hence the looser tolerance there."""
    B, T, H, K, V = 1, 50, 2, 4, 3
    q, k, v, g = _inputs(B, T, H, K, V, strong=False)
    g = torch.where(torch.rand(g.shape, generator=torch.Generator().manual_seed(3)) < 0.5, g, g * strength)
    g32 = g.float().requires_grad_()
    o = chunk_diag_linear_attn(q.float(), k.float(), v.float(), g32, chunk_size=32)[0]
    (grad,) = torch.autograd.grad(o.sum(), g32)
    assert torch.isfinite(o).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(o.double(), naive(q, k, v, g), rtol=tol, atol=tol)


def test_chunk_half_precision_keeps_dtype():
    q, k, v, g = (x.bfloat16() for x in _inputs(1, 40, 2, 8, 8, strong=False))
    o = chunk_diag_linear_attn(q, k, v, g)[0]
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), naive(q.float(), k.float(), v.float(), g.float()), rtol=3e-2, atol=3e-2)


def test_chunk_rejects_bad_shapes():
    q, k, v, g = _inputs(1, 5, 2, 4, 3, strong=False)
    with pytest.raises(ValueError, match=r"\[B, T, H, K\]"):
        chunk_diag_linear_attn(q, k[..., :3], v, g)
    with pytest.raises(ValueError, match="v must be"):
        chunk_diag_linear_attn(q, k, v[:, :4], g)
    with pytest.raises(ValueError, match="bonus u"):
        chunk_diag_linear_attn(q, k, v, g, u=torch.zeros(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("method", ["factored", "pairwise"])
@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
def test_each_form_matches_recurrence(method, bonus):
    """Both forms, chosen explicitly, equal the recurrence (values, final state and gradients), mild decays."""
    B, T, H, K, V = 2, 45, 2, 4, 3
    args = [x.requires_grad_() for x in _inputs(B, T, H, K, V, strong=False, seed=5)]
    u = torch.randn(H, K, dtype=torch.float64) if bonus else None
    h0 = torch.randn(B, H, K, V, dtype=torch.float64)
    w = torch.randn(B, T, H, V, dtype=torch.float64)
    o, ht = chunk_diag_linear_attn(*args, u=u, initial_state=h0, output_final_state=True, chunk_size=16,
                                   method=method)
    o_ref, ht_ref = naive_diag_linear_attn(*args, u=u, initial_state=h0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, **F64_TOL)
    torch.testing.assert_close(ht, ht_ref, **F64_TOL)
    for a, b in zip(torch.autograd.grad((o * w).sum(), args), torch.autograd.grad((o_ref * w).sum(), args)):
        torch.testing.assert_close(a, b, **F64_TOL)


def test_auto_falls_back_when_decays_are_too_strong_for_the_factored_form():
    q, k, v, g = _inputs(1, 40, 2, 4, 3, strong=False, dtype=torch.float32)
    g = g.clone()
    g[:, 10] = -500.0  # one token forgets everything: no factored chunk of >= 8 tokens spans less than 60
    with pytest.raises(ValueError, match="too strong for the factored form"):
        chunk_diag_linear_attn(q, k, v, g, method="factored")
    o = chunk_diag_linear_attn(q, k, v, g)[0]  # auto: pairwise
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), naive(q.double(), k.double(), v.double(), g.double()),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T, chunk_size", [(1, None), (30, 8), (64, None), (130, None)])
def test_scalar_decay_matches_recurrence(T, chunk_size):
    """A decay per head ([B, T, H], simple GLA / RetNet / SSD) equals the recurrence with that decay on every
    key dim, in values, state and gradients, also for strong decays (-200 per step)."""
    B, H, K, V = 2, 3, 4, 5
    q, k, v, _ = _inputs(B, T, H, K, V, strong=False, seed=T)
    gen = torch.Generator().manual_seed(7)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64))
    g = g * torch.where(torch.rand(B, T, H, generator=gen, dtype=torch.float64) < 0.2, 100.0, 1.0)
    args = [x.requires_grad_() for x in (q, k, v, g)]
    h0 = torch.randn(B, H, K, V, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, T, H, V, dtype=torch.float64)
    o, ht = chunk_diag_linear_attn(*args, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
    o_ref, ht_ref = naive_diag_linear_attn(*args, initial_state=h0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, **F64_TOL)
    torch.testing.assert_close(ht, ht_ref, **F64_TOL)
    loss, loss_ref = (o * w).sum() + ht.sum(), (o_ref * w).sum() + ht_ref.sum()
    leaves = args + [h0]
    for a, b in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(loss_ref, leaves)):
        torch.testing.assert_close(a, b, **F64_TOL)
    # the scalar form equals the per-key-dim forms given the same decay broadcast over K
    o_diag = chunk_diag_linear_attn(q, k, v, g[..., None].expand(q.shape), initial_state=h0)[0]
    torch.testing.assert_close(o.detach(), o_diag.detach(), **F64_TOL)


@pytest.mark.parametrize("T", [1, 2, 49, 64])
@pytest.mark.parametrize("form", ["scalar", "scalar-batch-constant", "factored"])
@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
@pytest.mark.parametrize("scale", [None, 1.0, 0.7])
def test_one_chunk_path_matches_recurrence(T, form, bonus, scale):
    """A sequence of at most one chunk, from the zero state and without a final state, takes the single
    masked-matmul path (``_one_chunk``): values and every gradient equal the token loop (float64), for a
    scalar decay (also one expanded over the batch, as RetNet's), per-key-dim decays and RWKV6's bonus."""
    B, H, K, V = 2, 3, 4, 5
    q, k, v, g = _inputs(B, T, H, K, V, strong=False, seed=T + 11)
    if form == "scalar":
        g = g[..., 0] * 3
    elif form == "scalar-batch-constant":
        g = g[:1, :, :, 0].expand(B, T, H)
    args = [x.requires_grad_() for x in (q, k, v)]
    g_leaf = (g if form != "scalar-batch-constant" else g[:1]).detach().requires_grad_()
    g_in = g_leaf.expand(B, T, H) if form == "scalar-batch-constant" else g_leaf
    u = torch.randn(H, K, dtype=torch.float64, requires_grad=True) if bonus else None
    w = torch.randn(B, T, H, V, dtype=torch.float64)
    import zigscan.backbones.mixers.linear_attn_ref as lar

    calls = []
    one = lar._one_chunk
    lar._one_chunk = lambda *a: calls.append(a[-1]) or one(*a)
    try:
        o = chunk_diag_linear_attn(*args, g_in, u=u, scale=scale)[0]
    finally:
        lar._one_chunk = one
    assert calls == ["scalar" if g.dim() == 3 else "factored"]
    o_ref = naive(*args, g_in, u=u, scale=K**-0.5 if scale is None else scale)
    torch.testing.assert_close(o, o_ref, **F64_TOL)
    leaves = args + [g_leaf] + ([u] if bonus else [])
    grads = (torch.autograd.grad((out * w).sum(), leaves, allow_unused=True, materialize_grads=True)
             for out in (o, o_ref))  # RWKV6's output never reads the last token's decay (T = 1: none)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **F64_TOL)


def test_one_chunk_path_leaves_strong_decays_to_the_chunked_forms():
    """Decays too strong for one factored chunk keep the chunked path (auto: smaller chunks or pairwise)."""
    q, k, v, g = _inputs(2, 40, 2, 4, 3, strong=True, seed=3)
    torch.testing.assert_close(chunk_diag_linear_attn(q, k, v, g)[0], naive(q, k, v, g), **F64_TOL)
    g32 = g.float().clone()
    g32[:, 10] = -500.0
    o = chunk_diag_linear_attn(q.float(), k.float(), v.float(), g32)[0]
    torch.testing.assert_close(o.double(), naive(q, k, v, g32.double()), rtol=1e-4, atol=1e-4)


def test_chunk_rejects_bad_options():
    q, k, v, g = _inputs(1, 5, 2, 4, 3, strong=False)
    with pytest.raises(ValueError, match="method must be"):
        chunk_diag_linear_attn(q, k, v, g, method="fast")
    for bad in (0, -4, 2.5):
        with pytest.raises(ValueError, match="chunk_size must be"):
            chunk_diag_linear_attn(q, k, v, g, chunk_size=bad)
    with pytest.raises(ValueError, match=r"g \[B, T, H, K\] or \[B, T, H\]"):
        chunk_diag_linear_attn(q, k, v, g[..., 0, 0])


# --------------------------------------------------------------------------- upstream transcriptions
def upstream_gla(m, x):
    """fla 0.6.0 GatedLinearAttention.forward (no cache/mask, no short conv, fused norm + swish gate)."""
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    gk = m.gk_proj(x)
    q, k, gk = (rearrange(t, "... (h d) -> ... h d", d=m.head_k_dim) for t in (q, k, gk))
    v = rearrange(v, "... (h d) -> ... h d", d=m.head_v_dim)
    gk = F.logsigmoid(gk) / m.gate_logit_normalizer
    o = naive(q, k, v, gk)  # chunk_gla, default scale
    g = rearrange(m.g_proj(x), "... (h d) -> ... h d", d=m.head_v_dim)
    w, eps = m.g_norm_swish_gate.weight, m.g_norm_swish_gate.eps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * w * g * torch.sigmoid(g)  # rms_norm_gated
    return m.o_proj(rearrange(o, "... h d -> ... (h d)"))


def upstream_rwkv6(m, x):
    """fla 0.6.0 RWKV6Attention.forward (no cache/mask)."""
    B, T, D = x.shape
    delta = F.pad(x, (0, 0, 1, 0))[:, :-1] - x  # token_shift
    lerp = m.x_proj[0]
    xx = lerp.linear(x + delta * lerp.mu).view(B, T, -1, m.proj_low_rank_dim)
    xx = torch.einsum("b t n r, h n r-> b t n h", torch.tanh(xx), m.x_proj[2].weight.view(D, 5, -1))
    r, w, k, v, g = (xx + m.x_bias).unbind(-2)
    r = m.r_proj.linear(x + delta * r)
    lora = m.w_proj.linear.lora
    w = lora[2](torch.tanh(lora[0](x + delta * w)))
    k = m.k_proj.linear(x + delta * k)
    v = m.v_proj.linear(x + delta * v)
    g = m.g_proj.linear(x + delta * g)
    r, w, k = (rearrange(t, "b t (h d) -> b t h d", d=m.head_k_dim) for t in (r, w, k))
    v = rearrange(v, "b t (h d) -> b t h d", d=m.head_v_dim)
    o = naive(r, k, v, -torch.exp(w), u=m.bonus, scale=1.0)  # chunk_rwkv6(..., scale=1.)
    o = rearrange(o, "... h d -> ... (h d)")
    o = F.group_norm(o.reshape(B * T, -1), m.num_heads, m.g_norm.weight, m.g_norm.bias, m.g_norm.eps).view(B, T, -1)
    return m.o_proj(o * F.silu(g))


def upstream_hgrn2(m, x):
    """fla 0.6.0 HGRN2Attention.forward (no cache/mask, no short conv, lower_bound=None)."""
    q, f, i = m.q_proj(x), m.f_proj(x), m.i_proj(x)
    q = F.silu(q)
    g = F.logsigmoid(f)
    k = 1 - g.exp()
    q, k, g = (rearrange(t, "... (h d) -> ... h d", d=m.head_f_dim) for t in (q, k, g))
    i = rearrange(i, "... (h d) -> ... h d", d=m.head_i_dim)
    o = rearrange(naive(q, k, i, g), "... h d -> ... (h d)")  # chunk_gla, default scale
    o = F.rms_norm(o, (o.shape[-1],), m.g_norm.weight, eps=1e-5)  # rms_norm_linear(eps=1e-5)
    return m.o_proj(o)


def upstream_simple_gla(m, x):
    """fla 0.6.0 SimpleGatedLinearAttention.forward (no cache/mask, use_short_conv=False, fused norm)."""
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    gk = m.gk_proj(x)
    q, k, v = (rearrange(t, "... (h d) -> ... h d", h=m.num_heads) for t in (q, k, v))
    gk = F.logsigmoid(gk) / m.gate_logit_normalizer  # (B, T, H): chunk_simple_gla's scalar gate
    o = naive(q, k, v, gk[..., None].expand_as(q))  # a scalar decay is a diagonal decay with equal entries
    g = rearrange(m.g_proj(x), "b t (h d) -> b t h d", h=m.num_heads)
    w, eps = m.g_norm_swish_gate.weight, m.g_norm_swish_gate.eps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * w * g * torch.sigmoid(g)
    return m.o_proj(rearrange(o, "b t h d -> b t (h d)"))


def upstream_retnet(m, x):
    """fla 0.6.0 MultiScaleRetention.forward (no cache/mask, no short conv, output gate, fused norm)."""
    q = rearrange(m.q_proj(x), "... (h d) -> ... h d", d=m.head_k_dim)
    k = rearrange(m.k_proj(x), "... (h d) -> ... h d", d=m.head_k_dim)
    T, d = q.shape[1], m.head_k_dim
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # RotaryEmbedding(dim=d)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = (repeat(f(freqs).to(q.dtype), "t d -> t 1 (2 d)") for f in (torch.cos, torch.sin))

    def rotate_half(t):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat((-t2, t1), dim=-1)

    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # rotary_embedding_ref
    v = rearrange(m.v_proj(x), "... (h d) -> ... h d", d=m.head_v_dim)
    g_gamma = (1 - 2.0 ** (-5.0 - torch.arange(q.shape[2], dtype=torch.float))).log()  # chunk_retention
    o = naive(q, k, v, g_gamma[:, None].expand(q.shape).to(q.dtype))
    g = rearrange(m.g_proj(x), "... (h d) -> ... h d", d=m.head_v_dim)
    w, eps = m.g_norm_swish_gate.weight, m.g_norm_swish_gate.eps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * w * g * torch.sigmoid(g)
    return m.o_proj(rearrange(o, "... h d -> ... (h d)"))


UPSTREAM = {
    "gla": upstream_gla,
    "rwkv6": upstream_rwkv6,
    "hgrn2": upstream_hgrn2,
    "simple-gla": upstream_simple_gla,
    "retnet": upstream_retnet,
}


def _randomize(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values for every parameter (upstream inits several to 0 or 1, which hides wiring bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.5 if p.dim() < 2 else p.shape[-1] ** -0.5))
    return m


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 65])
def test_mixer_matches_upstream_transcription(name, T):
    kwargs = {"hgrn2": {"expand_ratio": 16}}.get(name, {"num_heads": 2})  # several heads at d_model=32
    m = _randomize(get_mixer(name, 32, impl="reference", **kwargs)).double()
    x = torch.randn(2, T, 32, dtype=torch.float64)
    torch.testing.assert_close(m(x), UPSTREAM[name](m, x), **F64_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_mixer_reference_does_not_depend_on_chunk_size(name):
    m = _randomize(get_mixer(name, 64, impl="reference")).double()
    x = torch.randn(1, 50, 64, dtype=torch.float64)
    m.ref_chunk_size = 64
    y64 = m(x)
    m.ref_chunk_size = 7
    torch.testing.assert_close(m(x), y64, **F64_TOL)


@pytest.mark.parametrize("name", NAMES)
def test_mixer_reference_under_autocast(name):
    """bf16 autocast (how the GPU trainer calls the fallback): runs, keeps the op in float32, stays close."""
    m = get_mixer(name, 64, impl="reference")
    x = torch.randn(2, 40, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05 * m(x).abs().max().item())


# --------------------------------------------------------------------------- parameters
# Derived by hand from fla 0.6.0 fla/layers/{gla,rwkv6,hgrn2}.py for hidden_size=192 and our defaults
# (GLA/RWKV6: num_heads=4, expand_k=0.5 -> key_dim 96, expand_v=1 -> value_dim 192; HGRN2: expand_ratio=128
# -> 1 head, forget_dim 128; simple GLA: see its entry). Keep this list literal: a rename or shape change must fail here.
UPSTREAM_KEYS = {
    "gla": {
        "q_proj.weight": (96, 192),
        "k_proj.weight": (96, 192),
        "v_proj.weight": (192, 192),
        "g_proj.weight": (192, 192),
        "gk_proj.0.weight": (16, 192),
        "gk_proj.1.weight": (96, 16),
        "gk_proj.1.bias": (96,),
        "o_proj.weight": (192, 192),
        "g_norm_swish_gate.weight": (48,),
    },
    "rwkv6": {
        "x_proj.0.mu": (192,),
        "x_proj.0.linear.weight": (160, 192),
        "x_proj.2.weight": (192, 160),
        "x_bias": (5, 192),
        "r_proj.linear.weight": (96, 192),
        "w_proj.linear.lora.0.weight": (64, 192),
        "w_proj.linear.lora.2.weight": (96, 64),
        "w_proj.linear.lora.2.bias": (96,),
        "k_proj.linear.weight": (96, 192),
        "v_proj.linear.weight": (192, 192),
        "g_proj.linear.weight": (192, 192),
        "bonus": (4, 24),
        "g_norm.weight": (192,),
        "g_norm.bias": (192,),
        "o_proj.weight": (192, 192),
    },
    "hgrn2": {
        "q_proj.weight": (128, 192),
        "f_proj.weight": (128, 192),
        "i_proj.weight": (192, 192),
        "g_norm.weight": (192,),
        "o_proj.weight": (192, 192),
    },
    "simple-gla": {  # num_heads=4, expand_k = expand_v = 1, use_short_conv=False
        "q_proj.weight": (192, 192),
        "k_proj.weight": (192, 192),
        "v_proj.weight": (192, 192),
        "g_proj.weight": (192, 192),
        "gk_proj.weight": (4, 192),
        "gk_proj.bias": (4,),
        "g_norm_swish_gate.weight": (48,),
        "o_proj.weight": (192, 192),
    },
    "retnet": {  # num_heads=8, expand_k=1, expand_v=2 -> value_dim 384; rotary tables are not saved
        "q_proj.weight": (192, 192),
        "k_proj.weight": (192, 192),
        "v_proj.weight": (384, 192),
        "g_proj.weight": (384, 192),
        "o_proj.weight": (192, 384),
        "g_norm_swish_gate.weight": (48,),
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_upstream_layout(name):
    sd = get_mixer(name, 192).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == UPSTREAM_KEYS[name]


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("gla", {"num_heads": 3}, "divisible by num_heads=3"),
        ("gla", {"expand_k": 0.33}, "expand_k"),
        ("gla", {"num_heads": 0}, "positive int"),
        ("rwkv6", {"num_heads": 7}, "divisible by num_heads=7"),
        ("rwkv6", {"gate_low_rank_dim": 0}, "gate_low_rank_dim"),
        ("hgrn2", {"num_heads": 3}, "divisible by num_heads=3"),
        ("hgrn2", {"num_heads": 2, "expand_ratio": 32}, "contradicts"),
        ("hgrn2", {"expand_ratio": 500}, "expand_ratio"),
        ("simple-gla", {"num_heads": 3}, "divisible by num_heads=3"),
        ("simple-gla", {"gate_logit_normalizer": 0}, "gate_logit_normalizer"),
        ("retnet", {"num_heads": 3}, "divisible by num_heads=3"),
        ("retnet", {"num_heads": 32}, "even key head dim"),
    ],
)
def test_bad_configuration_is_rejected(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_mixer(name, 160, **kwargs)


def test_knobs_change_shapes():
    gla = get_mixer("gla", 64, num_heads=2, expand_k=1.0, gate_low_rank_dim=8)
    assert gla.g_norm_swish_gate.weight.shape == (32,) and gla.gk_proj[1].weight.shape == (64, 8)
    rwkv = get_mixer("rwkv6", 64, num_heads=8, proj_low_rank_dim=4)
    assert rwkv.bonus.shape == (8, 4) and rwkv.x_proj[0].linear.weight.shape == (20, 64)
    hg = get_mixer("hgrn2", 256, num_heads=4)
    assert (hg.num_heads, hg.expand_ratio) == (4, 64) and hg.q_proj.weight.shape == (256, 256)
    assert get_mixer("hgrn2", 48).num_heads == 1  # d_model < 128: one head of expand_ratio = d_model


def test_initialisation_follows_upstream():
    gla = get_mixer("gla", 192)
    bound = 2**-2.5 * (6 / (192 + 96)) ** 0.5  # xavier-uniform bound of q_proj
    assert gla.q_proj.weight.abs().max() <= bound and gla.q_proj.weight.abs().max() > 0.9 * bound
    assert (gla.gk_proj[1].bias == 0).all() and (gla.g_norm_swish_gate.weight == 1).all()
    rwkv = get_mixer("rwkv6", 192)
    lora = rwkv.w_proj.linear.lora
    assert (lora[0].weight == 0).all() and (lora[2].bias == 0).all()
    w = lora[2].weight  # orthogonal columns, gain 0.1 (96 x 64: rank < out, gain factor 1)
    torch.testing.assert_close(w.T @ w, 0.01 * torch.eye(64), atol=1e-5, rtol=0)
    assert all((p == 0).all() for p in (rwkv.bonus, rwkv.x_bias, rwkv.x_proj[0].mu, rwkv.g_norm.bias))


# --------------------------------------------------------------------------- GPU: against fla itself
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [50, 300])
def test_matches_fla_layer_on_gpu(name, T):
    if not torch.cuda.is_available() or importlib.util.find_spec("fla") is None:
        pytest.skip("needs CUDA and flash-linear-attention (pip install 'zigscan[fla]')")
    torch.manual_seed(0)
    ours = _randomize(get_mixer(name, 192, impl="kernel")).cuda()
    ref = ours.build_upstream().cuda()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, T, 192, device="cuda", requires_grad=True)
    y_up = ref(x)[0]
    (dx_up,) = torch.autograd.grad(y_up.square().sum(), x)
    y = ours(x)
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, y_up, rtol=2e-3, atol=2e-3)  # same kernels, same wiring
    torch.testing.assert_close(dx, dx_up, rtol=1e-2, atol=1e-2 * dx_up.abs().max().item())
    ours.impl = "reference"
    with torch.no_grad():  # reference vs fla's Triton kernels (tf32 dots inside: looser)
        torch.testing.assert_close(ours(x), y_up, rtol=1e-2, atol=1e-2)
