"""Pure-PyTorch references for linear attention with a per-key-dimension (diagonal) decay.

One recurrence covers GLA, HGRN2 and RWKV6 (fla's ``chunk_gla`` / ``chunk_rwkv6``). Per head, with a
state ``S`` of shape [K, V], log-decays ``g_t <= 0`` ([K]) and ``scale``:

* GLA / HGRN2 (``u is None``): ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``,  ``o_t = scale * q_t^T S_t``;
* RWKV6 (bonus ``u`` [H, K]):   ``o_t = scale * q_t^T (S_{t-1} + diag(u) k_t v_t^T)``, then the same update.

``chunk_diag_linear_attn`` is the vectorized reference (a Python loop over chunks only, never over
tokens); ``naive_diag_linear_attn`` is the obviously correct token-by-token twin used by the tests.
Layout follows fla: ``q, k, g: [B, T, H, K]``, ``v: [B, T, H, V]``, states ``[B, H, K, V]``.

Numerical stability: inside a chunk the cumulative log-decay ``G`` is non-increasing, and the
reference only exponentiates differences ``G_i - G_j`` with ``j <= i`` (masked *before* the exp) and
``G_last - G_j``, all ``<= 0``; arbitrarily strong decays underflow to 0 instead of overflowing. The
math runs in float32 (float64 inputs stay float64, autocast is switched off inside); as in fla's
kernels, in-chunk cumulative sums of huge log-decays (|G| ~ 1e5) limit float32 precision to ~1e-2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["chunk_diag_linear_attn", "naive_diag_linear_attn", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 16  # pairwise intra-chunk work ~ T * C * K, state loop ~ T / C steps: 16 is fastest on CPU


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, u: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != g.shape:
        raise ValueError(
            f"q, k, g must all be [B, T, H, K]; got q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)}"
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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked diagonal-decay linear attention (see the module docstring for the recurrence).

    Args:
        q, k: [B, T, H, K] queries and keys; g: [B, T, H, K] log-decays (<= 0); v: [B, T, H, V].
        scale: query scale, default ``K ** -0.5`` (fla's default).
        u: RWKV6 bonus [H, K] for the current token; ``None`` gives GLA semantics (state includes t).
        initial_state: [B, H, K, V] or None. chunk_size: tokens per chunk (any positive int).

    Returns:
        o: [B, T, H, V] in the dtype of ``q``; final state [B, H, K, V] (float32 or wider) or None.
    """
    _check(q, k, v, g, u)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    if q.shape[1] == 0:  # empty sequence: nothing to mix, the state passes through
        B, _, H, K = q.shape
        S = None if not output_final_state else (
            initial_state if initial_state is not None else q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32))
        return v.new_zeros(v.shape, dtype=q.dtype), S
    with torch.autocast(q.device.type, enabled=False):  # the math below is float32 (or wider) on purpose
        return _chunk_diag_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state, chunk_size)


def _chunk_diag_linear_attn(q, k, v, g, scale, u, initial_state, output_final_state, chunk_size):
    """The body of ``chunk_diag_linear_attn`` (arguments already checked, autocast off)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    cdt = torch.promote_types(q.dtype, torch.float32)  # float32 math for half inputs, float64 stays
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, d) -> (B, H, N, C, d), zero-padded at the end
        x = F.pad(x.to(cdt), (0, 0, 0, 0, 0, pad))
        return x.view(B, N, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    q, k, v, g = chunks(q) * scale, chunks(k), chunks(v), chunks(g)  # padded g = 0: decay 1, k = 0: no input
    gc = g.cumsum(-2)  # (B, H, N, C, K) inclusive cumulative log-decay from the chunk start, <= 0
    # RWKV6 reads the state before this token's decay: exclusive cumsum (shifted, not gc - g, which cancels)
    gq = gc if u is None else F.pad(gc[..., :-1, :], (0, 0, 1, 0))
    g_last = gc[..., -1:, :]  # (B, H, N, 1, K)

    # ---- intra-chunk: A_ij = sum_k q_ik k_jk exp(gq_ik - gc_jk), j <= i (j < i for RWKV6)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(0 if u is None else -1)
    diff = gq.unsqueeze(-2) - gc.unsqueeze(-3)  # (B, H, N, C, C, K), <= 0 where mask is True
    decay = torch.where(mask[:, :, None], diff, float("-inf")).exp()  # never exp a positive number
    A = (q.unsqueeze(-2) * k.unsqueeze(-3) * decay).sum(-1)  # (B, H, N, C, C)
    o = A @ v  # (B, H, N, C, V)
    if u is not None:  # bonus of the current token
        o = o + (q * u.to(cdt)[None, :, None, None, :] * k).sum(-1, keepdim=True) * v

    # ---- inter-chunk: carry the state across chunks (loop over chunks only)
    k_tail = k * (g_last - gc).exp()  # (B, H, N, C, K), decayed to the chunk end
    U = k_tail.transpose(-1, -2) @ v  # (B, H, N, K, V): each chunk's own contribution
    chunk_decay = g_last.squeeze(-2).exp().unsqueeze(-1)  # (B, H, N, K, 1)
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
    """Token-by-token recurrence (fla's ``naive_recurrent_gla`` / ``naive_recurrent_rwkv6``). Tests only:
    a Python loop over T."""
    _check(q, k, v, g, u)
    B, T, H, K = q.shape
    out_dtype = q.dtype
    cdt = torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.to(cdt) for x in (q, k, v, g))
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
