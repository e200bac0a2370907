"""Pure-PyTorch references for linear attention with a data-dependent decay per key dimension (diagonal)
or per head (scalar).

One recurrence covers GLA, HGRN2, RWKV6, simple GLA, RetNet and Mamba2's SSD (fla's ``chunk_gla`` /
``chunk_rwkv6`` / ``chunk_simple_gla``). Per head, with a state ``S`` of shape [K, V], log-decays
``g_t <= 0`` ([K], or one number broadcast over K) and ``scale``:

* GLA / HGRN2 (``u is None``): ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``,  ``o_t = scale * q_t^T S_t``;
* RWKV6 (bonus ``u`` [H, K]):   ``o_t = scale * q_t^T (S_{t-1} + diag(u) k_t v_t^T)``, then the same update.

``chunk_diag_linear_attn`` is the vectorized reference (a Python loop over chunks only, never over
tokens); ``naive_diag_linear_attn`` is the obviously correct token-by-token twin used by the tests.
Layout follows fla: ``q, k: [B, T, H, K]``, ``g: [B, T, H, K]`` or ``[B, T, H]``, ``v: [B, T, H, V]``,
states ``[B, H, K, V]``.

Inside a chunk, with ``G`` the cumulative log-decay from the chunk start, the pair (i, j <= i) weighs
``exp(G_i - G_j)``. Two ways to form it:

* ``factored`` (fla's chunk form): ``exp(G_i - m) * exp(m - G_j)`` around the chunk's midpoint
  ``m = G_last / 2``, so the in-chunk scores are one matrix product ``(q * exp(G - m)) (k * exp(m - G))^T``,
  attention's cost. Each factor is at most ``exp(span / 2)``, ``span = -G_last`` the chunk's total
  log-decay; a chunk is used only while its span is at most ``SPAN_LIMIT`` (60 in float32: factors within
  exp(+-30), masked-out products below exp(60)), halving the chunk (down to ``MIN_FACTORED_CHUNK``) when
  decays are stronger.
* ``pairwise``: ``exp(G_i - G_j)`` formed for every pair and masked *before* the exp, so no exponent is
  ever positive: arbitrarily strong decays underflow to 0 instead of overflowing, at ~C x K times the
  memory of the factored form. ``auto`` takes it when even the smallest factored chunk spans too much.
* ``scalar`` (``g`` is [B, T, H]): the decay is the same on every key dim, so the scores are
  ``(q k^T) * exp(G_i - G_j)`` with a C x C decay matrix masked before the exp: attention's cost and the
  pairwise form's stability, at any chunk size.

A sequence of at most one chunk, from the zero state and without a final state (the main job's 49 tokens),
takes ``_one_chunk``: the scalar or factored form as one masked product in the [B, H, T, d] layout, no
padding, no state, the causal mask multiplied in after the exp (an exp of -inf is slow on a CPU).

Across chunks the state is carried by a loop over chunks, with only non-positive exponents. The math runs
in float32 (float64 inputs stay float64, autocast is switched off inside); as in fla's kernels, in-chunk
cumulative sums of huge log-decays (|G| ~ 1e5) limit float32 precision to ~1e-2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["chunk_diag_linear_attn", "naive_diag_linear_attn", "DEFAULT_CHUNK_SIZE", "SPAN_LIMIT"]

DEFAULT_CHUNK_SIZE = 64  # factored form: scores are C x C matrix products, the state loop T / C steps
PAIRWISE_CHUNK_SIZE = 16  # pairwise form: memory ~ T * C * K, so small chunks
MIN_FACTORED_CHUNK = 8  # below this the factored form's chunk loop costs more than the pairwise form
SPAN_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}  # largest in-chunk log-decay for the factored form
Method = Literal["auto", "factored", "pairwise"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, u: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape != k.shape or g.shape not in (q.shape, q.shape[:3]):
        raise ValueError(
            f"q, k must be [B, T, H, K] and g [B, T, H, K] or [B, T, H]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, g {tuple(g.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H of q {tuple(q.shape[:3])}; got {tuple(v.shape)}")
    if u is not None and u.shape != q.shape[2:]:
        raise ValueError(f"bonus u must be [H, K] = {tuple(q.shape[2:])}; got {tuple(u.shape)}")


def chunk_diag_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    u: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
    method: Method = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked diagonal- or scalar-decay linear attention (see the module docstring for the recurrence).

    Args:
        q, k: [B, T, H, K] queries and keys; v: [B, T, H, V];
        g: log-decays (<= 0), [B, T, H, K] (one per key dim) or [B, T, H] (one per head, broadcast over K).
        scale: query scale, default ``K ** -0.5`` (fla's default).
        u: RWKV6 bonus [H, K] for the current token; ``None`` gives GLA semantics (state includes t).
        initial_state: [B, H, K, V] or None.
        chunk_size: the largest chunk (tokens; default 64 factored, 16 pairwise); outputs do not depend on it
            beyond rounding.
        method: for a per-key-dim ``g``: ``auto`` (factored while the decays allow it, else pairwise),
            ``factored`` (fails on decays too strong for it), ``pairwise``. A scalar ``g`` always takes the
            scalar form.

    Returns:
        o: [B, T, H, V] in the dtype of ``q``; final state [B, H, K, V] (float32 or wider) or None.
    """
    _check(q, k, v, g, u)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if method not in ("auto", "factored", "pairwise"):
        raise ValueError(f"method must be 'auto', 'factored' or 'pairwise', got {method!r}")
    if q.shape[1] == 0:  # empty sequence: nothing to mix, the state passes through
        B, _, H, K = q.shape
        S = None if not output_final_state else (
            initial_state if initial_state is not None else q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32))
        return v.new_zeros(v.shape, dtype=q.dtype), S
    with torch.autocast(q.device.type, enabled=False):  # the math below is float32 (or wider) on purpose
        cdt = torch.promote_types(q.dtype, torch.float32)  # float32 math for half inputs, float64 stays
        g = g.to(cdt)
        T = q.shape[1]
        if T <= (chunk_size or DEFAULT_CHUNK_SIZE) and initial_state is None and not output_final_state:
            # one chunk from the zero state: the scalar form, or the factored one where the decays allow it
            if g.dim() == 3 or (method != "pairwise" and _factored_chunk(g, T, cdt) == T):
                return _one_chunk(q, k, v, g, scale, u, cdt, "scalar" if g.dim() == 3 else "factored"), None
        if g.dim() == 3:  # one decay per head: the scalar form is exact and stable at any chunk
            return _chunk_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state,
                                      min(chunk_size or DEFAULT_CHUNK_SIZE, T), cdt, "scalar")
        C = None if method == "pairwise" else _factored_chunk(g, min(chunk_size or DEFAULT_CHUNK_SIZE, T), cdt)
        if C is None and method == "factored":
            raise ValueError(
                f"chunk_diag_linear_attn: log-decays too strong for the factored form (more than "
                f"{SPAN_LIMIT.get(cdt, SPAN_LIMIT[torch.float32]):.0f} within {MIN_FACTORED_CHUNK} tokens); "
                "use method='auto' or 'pairwise'"
            )
        if C is not None:
            return _chunk_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state, C, cdt, "factored")
        C = min(chunk_size or PAIRWISE_CHUNK_SIZE, PAIRWISE_CHUNK_SIZE, T)
        return _chunk_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state, C, cdt, "pairwise")


def _factored_chunk(g: torch.Tensor, C: int, cdt: torch.dtype) -> int | None:
    """The largest chunk in C, C/2, ... (>= MIN_FACTORED_CHUNK, or C itself if smaller) whose every chunk's
    total log-decay is within SPAN_LIMIT; None if there is none."""
    limit = SPAN_LIMIT.get(cdt, SPAN_LIMIT[torch.float32])
    T = g.shape[1]
    while True:
        N = -(-T // C)
        span = -F.pad(g, (0,) * (2 * (g.dim() - 2)) + (0, N * C - T)).unflatten(1, (N, C)).sum(2).min().item()
        if span <= limit:
            return C
        if C // 2 < MIN_FACTORED_CHUNK:
            return None
        C //= 2


def _one_chunk(q, k, v, g, scale, u, cdt, form):
    """The whole sequence as one chunk from the zero state (no state out): ``o = (scores * decay) v`` in the
    [B, H, T, d] layout, with no padding and no state. ``form`` is ``scalar`` (g [B, T, H]) or ``factored``
    (g [B, T, H, K], its total log-decay within ``SPAN_LIMIT``, checked by the caller).

    The causal mask is a multiply by a 0/1 matrix *after* the exp, never an exp of -inf: on a CPU, ``exp``
    of -inf (or of any number whose exp underflows) is several times slower than of a finite one. A
    scalar ``g`` that is constant over the batch (an ``expand``-ed [H] or [1, T, H], RetNet's) gives one
    [1, H, T, T] decay matrix, broadcast over the batch."""
    B, T, H, K = q.shape
    out_dtype = q.dtype
    scale = K**-0.5 if scale is None else scale
    q, k, v = (x.to(cdt).transpose(1, 2) for x in (q, k, v))  # (B, H, T, d) views
    if form == "factored" or u is not None:  # elementwise ops on q, k (and g): on plain tensors, not on
        q, k = q.contiguous(), k.contiguous()  # transposed views (several times slower on a CPU)
    keep = torch.ones(T, T, dtype=cdt, device=q.device).tril(0 if u is None else -1)  # 1 on j <= i (j < i)
    if form == "scalar":
        if g.stride(0) == 0:  # the same decays for every batch element: one decay matrix for all
            g = g[:1]
        gc = g.transpose(1, 2).cumsum(-1)  # (B|1, H, T) inclusive cumulative log-decay, <= 0, non-increasing
        gq = gc if u is None else F.pad(gc[..., :-1], (1, 0))  # RWKV6 reads the state before its decay
        # diff_ij = gq_i - gc_j <= 0 on j <= i; above the diagonal (>= 0) it is zeroed before the exp
        decay = ((gq.unsqueeze(-1) - gc.unsqueeze(-2)) * keep).exp() * (keep * scale)  # (B|1, H, T, T)
        A = (q @ k.transpose(-1, -2)) * decay  # (B, H, T, T)
    else:
        gc = g.transpose(1, 2).contiguous().cumsum(-2)  # (B, H, T, K)
        gq = gc if u is None else F.pad(gc[..., :-1, :], (0, 0, 1, 0))
        m = gc[..., -1:, :] / 2  # the midpoint: both factors within exp(+-span / 2)
        qs = q if scale == 1 else q * scale
        A = ((qs * (gq - m).exp()) @ (k * (m - gc).exp()).transpose(-1, -2)) * keep  # (B, H, T, T)
    o = A @ v  # (B, H, T, V)
    if u is not None:  # bonus of the current token
        o = o + (q * (u.to(cdt).unsqueeze(1) * scale) * k).sum(-1, keepdim=True) * v
    # contiguous: the mixers' elementwise ops (gate, norm) on a transposed view mixed with contiguous
    # operands run several times slower than on plain tensors
    return o.transpose(1, 2).to(out_dtype).contiguous()  # (B, T, H, V)


def _chunk_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state, C, cdt, form):
    """The body of ``chunk_diag_linear_attn`` (arguments checked, autocast off, chunk and form chosen)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    scale = K**-0.5 if scale is None else scale
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, d) -> (B, H, N, C, d), zero-padded at the end
        x = F.pad(x.to(cdt), (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    # padded g = 0: decay 1, k = 0: no input; a scalar g is (B, H, N, C, 1) and broadcasts over K
    q, k, v, g = chunks(q) * scale, chunks(k), chunks(v), chunks(g if g.dim() == 4 else g[..., None])
    gc = g.cumsum(-2)  # (B, H, N, C, K|1) inclusive cumulative log-decay from the chunk start, <= 0
    # RWKV6 reads the state before this token's decay: exclusive cumsum (shifted, not gc - g, which cancels)
    gq = gc if u is None else F.pad(gc[..., :-1, :], (0, 0, 1, 0))
    g_last = gc[..., -1:, :]  # (B, H, N, 1, K|1)

    # ---- intra-chunk scores A_ij = sum_k q_ik k_jk exp(gq_ik - gc_jk), j <= i (j < i for RWKV6)
    keep = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(0 if u is None else -1)
    if form == "factored":
        m = g_last / 2  # the chunk's midpoint: both factors within exp(+-span / 2)
        A = ((q * (gq - m).exp()) @ (k * (m - gc).exp()).transpose(-1, -2)).masked_fill(~keep, 0.0)
    elif form == "scalar":  # one decay per head: a C x C decay matrix, masked before the exp
        decay = torch.where(keep, gq - gc.transpose(-1, -2), float("-inf")).exp()  # (B, H, N, C, C)
        A = (q @ k.transpose(-1, -2)) * decay
    else:
        diff = gq.unsqueeze(-2) - gc.unsqueeze(-3)  # (B, H, N, C, C, K), <= 0 where keep is True
        decay = torch.where(keep[:, :, None], diff, float("-inf")).exp()  # never exp a positive number
        A = (q.unsqueeze(-2) * k.unsqueeze(-3) * decay).sum(-1)  # (B, H, N, C, C)
    o = A @ v  # (B, H, N, C, V)
    if u is not None:  # bonus of the current token
        o = o + (q * u.to(cdt)[None, :, None, None, :] * k).sum(-1, keepdim=True) * v

    # ---- inter-chunk: carry the state across chunks (loop over chunks only)
    if N == 1 and initial_state is None and not output_final_state:
        return o.squeeze(2).transpose(1, 2)[:, :T].to(out_dtype), None  # one chunk, no state: done
    k_tail = k * (g_last - gc).exp()  # (B, H, N, C, K), decayed to the chunk end
    U = k_tail.transpose(-1, -2) @ v  # (B, H, N, K, V): each chunk's own contribution
    chunk_decay = g_last.squeeze(-2).exp().unsqueeze(-1)  # (B, H, N, K|1, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cdt)
    prev = []
    for U_n, decay_n in zip(U.unbind(2), chunk_decay.unbind(2)):  # unbind: one stack in backward, not N
        prev.append(S)
        S = S * decay_n + U_n
    S_prev = torch.stack(prev, dim=2)  # (B, H, N, K, V): state entering each chunk
    o = o + (q * gq.exp()) @ S_prev  # (B, H, N, C, V)

    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def naive_diag_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    u: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token recurrence (fla's ``naive_recurrent_gla`` / ``naive_recurrent_rwkv6``; a scalar
    ``g`` [B, T, H] decays every key dim alike). Tests only: a Python loop over T."""
    _check(q, k, v, g, u)
    B, T, H, K = q.shape
    out_dtype = q.dtype
    cdt = torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.to(cdt) for x in (q, k, v, g if g.dim() == 4 else g[..., None]))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(cdt).clone()
    out = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        if u is None:
            S = S * g[:, t].exp()[..., None] + kv
            out.append((q[:, t, :, :, None] * scale * S).sum(-2))
        else:
            out.append((q[:, t, :, :, None] * scale * (S + u.to(cdt)[..., None] * kv)).sum(-2))
            S = S * g[:, t].exp()[..., None] + kv
    o = torch.stack(out, dim=1) if T else v.new_zeros(B, 0, H, v.shape[-1], dtype=cdt)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
