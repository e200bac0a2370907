"""Pure-PyTorch references of the delta-rule family (DeltaNet, Gated DeltaNet, RWKV-7).

Two layers of code, top to bottom (the building blocks the mixers wire around them, ``ShortConvolution``,
``RMSNorm`` and ``l2_normalize``, are in ``modules``):

* chunked, vectorized operators (a Python loop over chunks only, never over tokens):
  ``delta_rule_chunked`` (the WY/UT form of ``fla.ops.delta_rule`` / ``fla.ops.gated_delta_rule``) and
  ``dplr_chunked`` (the diagonal-plus-low-rank recurrence of ``fla.ops.generalized_delta_rule.dplr``,
  which ``fla.ops.rwkv7.chunk_rwkv7`` calls);
* their naive token-by-token twins ``delta_rule_recurrent`` / ``dplr_recurrent``: slow, obviously correct,
  for tests only.

All operators take fla's layout: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, per-head scalars ``[B, T, H]``,
and return ``o: [B, T, H, V]`` in the dtype of ``v``. They compute in float32 (float64 stays float64).
The recurrent state is ``S: [K, V]`` per head and the output is ``o_t = scale * S_t^T q_t``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .modules import heads_first

__all__ = [
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "dplr_chunked",
    "dplr_recurrent",
    "unit_lower_solve",
]


# ----------------------------------------------------------------------------------------------------------
# chunked operators
# ----------------------------------------------------------------------------------------------------------
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T, H, *] -> [B, H, N, C, *] (zero-padded at the end of time to N*C), contiguous."""
    x = heads_first(x.to(dtype))  # (B, H, T, *)
    B, H, T = x.shape[:3]
    N = math.ceil(T / C)
    if N * C != T:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, N * C - T))
    # contiguous: for one chunk the reshape is a view of the transposed input, and elementwise ops on such
    # views mixed with contiguous operands run several times slower on a CPU (the products copy it anyway)
    return x.reshape(B, H, N, C, *x.shape[3:]).contiguous()


def _from_chunks(o: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, N, C, V] -> [B, T, H, V], contiguous (elementwise ops on a transposed view mixed with contiguous
    operands, as the mixers' output gates and norms, run several times slower on a CPU)."""
    B, H, N, C, V = o.shape
    return o.reshape(B, H, N * C, V)[:, :, :T].movedim(1, 2).to(dtype).contiguous()


class _UnitLowerSolve(torch.autograd.Function):
    """``u = (I + tril(M, -1))^-1 b`` for M [..., C, C], b [..., C, R]: the maths of
    ``solve_triangular(M, b, upper=False, unitriangular=True)`` (it reads only M's strict lower triangle and
    gives only that triangle a gradient), through the explicit inverse.

    On a CPU the batched triangular solve of small chunks is slow per right-hand side: inverting with the
    C columns of the identity once and multiplying (``T^-1 b``) is cheaper whenever b has more than a few
    columns, and the backward is two matrix products instead of another solve:
    ``db = T^-T du``, ``dM = -tril(db u^T, -1)``. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, M, b):
        eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand(M.shape)
        t_inv = torch.linalg.solve_triangular(M, eye, upper=False, unitriangular=True)  # (..., C, C)
        u = t_inv @ b
        ctx.save_for_backward(t_inv, u)
        return u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, du):
        t_inv, u = ctx.saved_tensors
        db = t_inv.transpose(-1, -2) @ du
        dM = (db @ u.transpose(-1, -2)).tril_(-1).neg_() if ctx.needs_input_grad[0] else None
        return dM, db


def unit_lower_solve(M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(I + tril(M, -1)) u = b`` solved for u (M [..., C, C], b [..., C, R]); see ``_UnitLowerSolve``."""
    return _UnitLowerSolve.apply(M, b)


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """(Gated) delta rule, chunked with the WY/UT representation. Per head and step::

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = scale * S_t^T q_t

    (``g=None``: no decay, plain DeltaNet). q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g: [B, T, H]
    (g is the log decay, any value <= 0 works: within-chunk decays are formed pairwise, exp(G_i - G_j)
    with j <= i, so they never overflow). Returns o: [B, T, H, V]. ``scale`` defaults to K ** -0.5.
    """
    B, T, H, K = q.shape
    V, out_dtype = v.shape[-1], v.dtype
    if T == 0:
        return v.new_zeros(B, 0, H, V)
    C, dt = min(chunk_size, T), _compute_dtype(v)  # a short input is one chunk of its own length, unpadded
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (_to_chunks(t, C, dt) for t in (q, k, v))  # (B, H, N, C, K|V)
    beta = _to_chunks(beta[..., None], C, dt)  # (B, H, N, C, 1)
    N = q.shape[2]
    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] >= idx[None, :]  # (C, C) j <= i

    if g is None:
        decay = causal.to(dt)  # exp(G_i - G_j) = 1 on j <= i
        g_in, g_out, g_last = None, None, None
    else:
        G = _to_chunks(g[..., None], C, dt)[..., 0].cumsum(-1)  # (B, H, N, C) inclusive cumsum
        # exp(G_i - G_j) on j <= i, 0 above: the exponent is zeroed there and the mask multiplies after the exp
        # (an exp of -inf is several times slower on a CPU than of a finite number)
        causal_f = causal.to(dt)
        decay = ((G[..., :, None] - G[..., None, :]) * causal_f).exp() * causal_f  # (B, H, N, C, C)
        g_in = G.exp()[..., None]  # (B, H, N, C, 1) decay from chunk start to i
        g_out = (G[..., -1:] - G).exp()[..., None]  # (B, H, N, C, 1) decay from j to chunk end
        g_last = G[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)

    # (I + M) [U | W] = [beta V | beta exp(G) K],  M_ij = beta_i exp(G_i - G_j) k_i.k_j  (j < i).
    # unit_lower_solve (as solve_triangular(unitriangular=True)) reads only the strict lower triangle of its
    # matrix (and its gradient is that triangle's), so M is passed unmasked, without the identity.
    kk = k @ k.transpose(-1, -2)  # (B, H, N, C, C)
    M = beta * kk if g is None else beta * kk * decay  # without gates the decay is 1 on j < i
    attn = (q @ k.transpose(-1, -2)) * (decay * scale)  # (B, H, N, C, C), zero above the diagonal
    if N == 1:  # one chunk from the zero state: o = attn U, no W and no state
        u = unit_lower_solve(M, beta * v)  # (B, H, 1, C, V)
        return _from_chunks(attn @ u, T, out_dtype)
    kb = beta * k if g_in is None else beta * k * g_in
    uw = unit_lower_solve(M, torch.cat([beta * v, kb], -1))
    u, w = uw.split([V, K], dim=-1)  # (B, H, N, C, V), (B, H, N, C, K)
    q_in = q * scale if g_in is None else q * scale * g_in
    k_out = k if g_out is None else k * g_out

    # inter-chunk recurrence on the state S: [B, H, K, V] (loop over chunks only)
    # (unbind once: indexing chunk n inside the loop would cost a full-size zero tensor per chunk in backward)
    S = q.new_zeros(B, H, K, V)
    states, v_new = [], []
    u_n, w_n, kt_n = u.unbind(2), w.unbind(2), k_out.transpose(-1, -2).unbind(2)
    gl_n = g_last.unbind(2) if g_last is not None else None
    for n in range(N):
        states.append(S)
        vn = u_n[n] - w_n[n] @ S  # (B, H, C, V) pseudo-values
        v_new.append(vn)
        if n + 1 < N:
            S = (S if gl_n is None else S * gl_n[n]) + kt_n[n] @ vn
    Sn = torch.stack(states, 2)  # (B, H, N, K, V) state at each chunk start
    vn = torch.stack(v_new, 2)  # (B, H, N, C, V)
    o = q_in @ Sn + attn @ vn  # (B, H, N, C, V)
    return _from_chunks(o, T, out_dtype)


def dplr_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    *,
    scale: float = 1.0,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Diagonal-plus-low-rank delta rule (fla ``dplr``; RWKV-7 is ``a = -kk, b = kk * a_gate``). Per head::

        S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T,    o_t = scale * S_t^T q_t

    q, k, a, b, gk: [B, T, H, K]; v: [B, T, H, V]. Returns o: [B, T, H, V].

    Within a chunk, exp(G_i - G_j) (G: cumulative log decay per channel) is split as
    exp(G_i - m) * exp(m - G_j) around the chunk's midpoint m = G_last / 2, so no factor exceeds
    exp(|G_last| / 2). Products are exact up to rounding; the only limit is overflow, checked here:
    RWKV-7's gate (gk >= -0.6065) gives at most exp(19.4) at chunk_size 64.
    """
    B, T, H, K = q.shape
    V, out_dtype = v.shape[-1], v.dtype
    if T == 0:
        return v.new_zeros(B, 0, H, V)
    C, dt = min(chunk_size, T), _compute_dtype(v)  # a short input is one chunk of its own length, unpadded
    q, k, v, a, b, gk = (_to_chunks(t, C, dt) for t in (q, k, v, a, b, gk))  # (B, H, N, C, K|V)
    N = q.shape[2]
    G = gk.cumsum(-2)  # (B, H, N, C, K) inclusive
    G_ex = G - gk  # exclusive: decay from chunk start to i-1
    m = G[..., -1:, :] / 2  # (B, H, N, 1, K)
    limit = 80.0 if dt == torch.float32 else 700.0
    if m.abs().max().item() > limit:
        raise ValueError(
            f"dplr_chunked: cumulative log decay {2 * m.abs().max().item():.1f} within a chunk of {C} is too "
            f"large for the split form in {dt} (limit {2 * limit:.0f}); pass a smaller chunk_size"
        )
    idx = torch.arange(C, device=q.device)
    causal = (idx[:, None] >= idx[None, :]).to(dt)  # (C, C) j <= i

    # the four within-chunk products in two matmuls: q_i and a_i (decayed) against [k_j; b_j] (decayed back)
    # (split / cat, not slicing: their backward is a cat / split, not a zero-filled full-size gradient per slice;
    # k and b each decayed, then concatenated: no decay broadcast over a stack, whose gradient is a reduction)
    e_back = (m - G).exp()
    kb = torch.cat([k * e_back, b * e_back], -2)  # (B, H, N, 2C, K) j side
    kb_t = kb.transpose(-1, -2)
    q_in = (q if scale == 1 else q * scale) * (G - m).exp()
    A_q = (q_in @ kb_t) * causal.repeat(1, 2)  # (B, H, N, C, 2C) [A_qk | A_qb], j <= i
    A_ak, A_ab = ((a * (G_ex - m).exp()) @ kb_t).split(C, -1)  # (B, H, N, C, C) each, used on j < i only

    # u_i = a_i^T S_{i-1}:  (I - A_ab) U = A_ak V + (a exp(G_ex)) S_0  ->  U = Uv + W S_0.
    # unit_lower_solve reads only the strict lower triangle of -A_ab (its gradient too);
    # A_ak's diagonal is cut by the causal mask shifted one step (tril(-1)).
    rhs = A_ak.tril(-1) @ v  # (B, H, N, C, V)
    if N == 1:  # one chunk from the zero state: U = Uv, no W and no state
        U = unit_lower_solve(-A_ab, rhs)
        o = A_q @ torch.cat([v, U], -2)  # (B, H, 1, C, V) = A_qk V + A_qb U
        return _from_chunks(o, T, out_dtype)
    uw = unit_lower_solve(-A_ab, torch.cat([rhs, a * G_ex.exp()], -1))
    u0, w = uw.split([V, K], dim=-1)
    g_last = G[..., -1, :].exp()[..., None]  # (B, H, N, K, 1)
    k_out = k * (G[..., -1:, :] - G).exp()  # (B, H, N, C, K) decay from j to chunk end
    b_out = b * (G[..., -1:, :] - G).exp()

    S = q.new_zeros(B, H, K, V)
    states, us = [], []
    kv_n = (k_out.transpose(-1, -2) @ v).unbind(2)  # (B, H, K, V) per chunk, state-independent
    u0_n, w_n, gl_n, bt_n = u0.unbind(2), w.unbind(2), g_last.unbind(2), b_out.transpose(-1, -2).unbind(2)
    for n in range(N):
        states.append(S)
        un = u0_n[n] + w_n[n] @ S  # (B, H, C, V)
        us.append(un)
        if n + 1 < N:
            S = gl_n[n] * S + kv_n[n] + bt_n[n] @ un
    Sn = torch.stack(states, 2)  # (B, H, N, K, V)
    U = torch.stack(us, 2)  # (B, H, N, C, V)
    o = (q * scale * G.exp()) @ Sn + A_q @ torch.cat([v, U], -2)  # (B, H, N, C, V)
    return _from_chunks(o, T, out_dtype)


# ----------------------------------------------------------------------------------------------------------
# naive twins (token loop; tests only)
# ----------------------------------------------------------------------------------------------------------
def delta_rule_recurrent(q, k, v, beta, g=None, *, scale: float | None = None) -> torch.Tensor:
    """Token-by-token (gated) delta rule, the obvious transcription of fla's ``naive_recurrent_*``. Slow."""
    B, T, H, K = q.shape
    dt = _compute_dtype(v)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, beta = (t.to(dt) for t in (q, k, v, beta))
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].to(dt).exp()[..., None, None]
        kt = k[:, t]  # (B, H, K)
        vt = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, kt))
        S = S + kt[..., :, None] * vt[..., None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(out, 1) if out else v.new_zeros(v.shape).to(dt)


def dplr_recurrent(q, k, v, a, b, gk, *, scale: float = 1.0) -> torch.Tensor:
    """Token-by-token DPLR recurrence (fla ``dplr_recurrence``, with an explicit ``scale``). Slow."""
    B, T, H, K = q.shape
    dt = _compute_dtype(v)
    q, k, v, a, b, gk = (t.to(dt) for t in (q, k, v, a, b, gk))
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        aS = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = (S * gk[:, t].exp()[..., None] + b[:, t][..., None] * aS[..., None, :]
             + k[:, t][..., None] * v[:, t][..., None, :])
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(out, 1) if out else v.new_zeros(v.shape).to(dt)
