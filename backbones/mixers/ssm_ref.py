"""Pure-PyTorch, vectorized state-space scans shared by the Mamba family (the references of the kernels).

* ``selective_scan(u, delta, A, B, C, ...)``: Mamba v1's selective scan (one decay exp(delta A) per
  channel and state), the maths of ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` in a
  [B, L, D] layout, in two formulations picked by shape (``method="auto"``): a token loop that updates
  the whole (b, n, d) state per token with a hand-written backward (short sequences, large states: the
  main job), and the chunked scan (long sequences with a small state, or when the loop would keep too
  much memory). Chunked: inside a chunk of ``chunk_size`` tokens the decay between tokens s <= t is
  ``exp(S_t - S_s)`` with ``S = A * cumsum(delta)`` the chunk-local cumulative log-decay (a segment sum: <= 0, no exp
  of a large positive number; local sums keep it precise), combined in log2(chunk) vectorized doubling
  steps; the state is carried by a loop over chunks (never over tokens). A custom autograd function keeps
  every intermediate one chunk big and runs the backward as the same scan in reverse (a dense T x T
  segment matrix per channel and state, or autograd through the [B, L, d, n] states, costs many times
  more memory and time on a CPU).
* ``ssd_scan(x, dt, A, B, C, ...)``: Mamba2's SSD (one scalar decay per head) as linear attention on the
  shared chunked op of ``linear_attn_ref`` (queries C, keys B, values dt x, log-decay dt A).

Each has a naive token-loop twin (``*_naive``) used only by the tests to check the fast versions.
``causal_conv1d`` is the depthwise causal convolution of the Mamba block as shifted multiply-adds.
Scans run in float32 (like the kernels) and return the input dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import cpu_scan
from .linear_attn_ref import chunk_diag_linear_attn
from .modules import causal_depthwise_conv

__all__ = [
    "causal_conv1d",
    "selective_scan",
    "selective_scan_naive",
    "ssd_one_chunk",
    "ssd_scan",
    "ssd_scan_naive",
]

SELECTIVE_SCAN_CHUNK = 32  # tokens per chunk of selective_scan (16..64 timed within noise on 2 CPU cores)
SSD_CHUNK = 64  # tokens per chunk of ssd_scan's reference
# selective_scan "auto": the token loop unless it would keep more than LOOP_MAX_SAVED_BYTES for the backward, or the
# sequence is longer than LOOP_MAX_LENGTH with a per-token state (b x d x n) under LOOP_MIN_STATE elements (then
# per-op overhead, L x ~15 small ops, outweighs the doubling scan's extra arithmetic)
LOOP_MAX_SAVED_BYTES = 2**30
LOOP_MAX_LENGTH = 256
LOOP_MIN_STATE = 2**16
# the loop without autograd walks the batch in blocks of at most this many state elements (2 MiB in float32)
INFERENCE_STATE_ELEMENTS = 2**19
_LOG2E = 1.4426950408889634  # log2(e)
_LN2 = 0.6931471805599453  # ln(2)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  silu: bool = False) -> torch.Tensor:
    """Depthwise causal conv over time in the (b, L, d) layout: the maths of ``nn.Conv1d(d, d, W, groups=d,
    padding=W - 1)`` with the tail cut off (as mamba_ssm's ``causal_conv1d_fn``), optionally SiLU.

    x: (b, L, d); weight: (d, 1, W) (the Conv1d's own parameter); bias: (d,) or None -> (b, L, d).
    y_t = sum_i weight[:, 0, i] x_(t - W + 1 + i), as W shifted multiply-adds (``modules.causal_depthwise_conv``):
    on a CPU the depthwise convolution's backward is many times slower than these few elementwise ops.
    """
    return causal_depthwise_conv(x, weight[:, 0, :].to(x.dtype), None if bias is None else bias.to(x.dtype), silu)


# ---------------------------------------------------------------------------------------------------
# Mamba v1 selective scan: h_t = exp(delta_t A) h_(t-1) + delta_t u_t B_t (one decay per channel, state)
# ---------------------------------------------------------------------------------------------------


def _up(t: torch.Tensor) -> torch.Tensor:
    """float32 for half types (scans run in fp32 like the kernels); float64 stays float64 (tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _chunk_scan(delta: torch.Tensor, A: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = exp(delta_t A) h_(t-1) + x_t inside one chunk.

    delta: (b, T, d); A: (d, n); x: (b, T, d, n); h0: (b, d, n) state before the chunk -> h (b, T, d, n).
    The log-decay of tokens s+1..t is the segment sum (cd_t - cd_s) * A with cd the chunk-local cumsum of
    delta (A is constant in time, so one cumsum over (b, T, d) serves all n states); it is <= 0 when
    delta >= 0 and A <= 0, so exp never sees a large positive number. log2(T) doubling steps: after the
    step of width k, h_t holds the inputs of the last 2k tokens.
    """
    T = x.shape[1]
    cd = delta.cumsum(1)  # (b, T, d)
    h = x.clone()
    k = 1
    while k < T:
        seg = (cd[:, k:] - cd[:, :-k]).unsqueeze(-1) * A  # (b, T-k, d, n) log-decay over t-k+1..t
        h[:, k:] += seg.exp_().mul_(h[:, :-k])
        k *= 2
    return h.addcmul_(torch.exp(cd.unsqueeze(-1) * A), h0.unsqueeze(1))  # (b, T, d, n)


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t for the recurrence above, looping over chunks with a carried state.

    Every intermediate is one chunk big (cache-friendly; no [B, L, d, n] tensor is allocated or kept):
    forward saves only the chunk-start states, backward recomputes each chunk and runs the adjoint
    recurrence g_t = C_t gy_t + exp(delta_(t+1) A) g_(t+1) backwards with the same chunk scan.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, T: int):
        b, L, d = u.shape
        y = u.new_empty(b, L, d)
        h0 = u.new_zeros(b, d, A.shape[1])  # (b, d, n)
        starts = []
        for t0 in range(0, L, T):
            sl = slice(t0, t0 + T)
            x = (delta[:, sl] * u[:, sl]).unsqueeze(-1) * B[:, sl, None, :]  # (b, T, d, n)
            starts.append(h0)
            h = _chunk_scan(delta[:, sl], A, x, h0)  # (b, T, d, n)
            y[:, sl] = torch.matmul(h, C[:, sl, :, None]).squeeze(-1)  # (b, T, d)
            h0 = h[:, -1]
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts, 1))
        ctx.T = T
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        T = ctx.T
        L = u.shape[1]
        du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
        dA = torch.zeros_like(A)
        gcarry = torch.zeros_like(starts[:, 0])  # (b, d, n): exp(delta_(t1+1) A) g_(t1+1) from the next chunk
        for c, t0 in reversed(list(enumerate(range(0, L, T)))):
            sl = slice(t0, t0 + T)
            dlt, uu, BB, CC, gyc = delta[:, sl], u[:, sl], B[:, sl], C[:, sl], gy[:, sl]
            du_c = dlt * uu  # (b, T, d)
            x = du_c.unsqueeze(-1) * BB.unsqueeze(2)  # (b, T, d, n)
            h = _chunk_scan(dlt, A, x, starts[:, c])  # (b, T, d, n) recomputed
            gh = gyc.unsqueeze(-1) * CC.unsqueeze(2)  # (b, T, d, n)
            # reversed time: g_t = gh_t + exp(delta_(t+1) A) g_(t+1), entering with gcarry at the chunk end
            dlt_next = torch.cat([dlt[:, 1:], torch.zeros_like(dlt[:, :1])], 1)
            g = _chunk_scan(dlt_next.flip(1), A, gh.flip(1), gcarry).flip(1)  # (b, T, d, n)
            gcarry = torch.exp(dlt[:, 0, :, None] * A) * g[:, 0]
            ddA = g * (h - x)  # d h_t / d(delta_t A) = exp(.) h_(t-1) = h_t - x_t
            dx_du = torch.matmul(g, BB.unsqueeze(-1)).squeeze(-1)  # (b, T, d) grad of delta*u
            dB[:, sl] = torch.matmul(g.transpose(-1, -2), du_c.unsqueeze(-1)).squeeze(-1)  # (b, T, n)
            dC[:, sl] = torch.matmul(gyc.unsqueeze(-2), h).squeeze(-2)  # (b, T, n)
            du[:, sl] = dx_du * dlt
            ddelta[:, sl] = dx_du * uu + (ddA * A).sum(-1)
            dA += torch.einsum("btdn,btd->dn", ddA, dlt)
        return du, ddelta, dA, dB, dC, None


class _SelectiveScanLoop(torch.autograd.Function):
    """y_t = C_t . h_t by a loop over tokens, each step one update of the whole state (b, n, d).

    For short sequences with a large state (the main job: L = 49 tokens, b x d x n = 64 x 256 x 16) the
    recurrence itself is the cheapest formulation: one exponential and one multiply-add per state element
    and token (the chunked doubling scan needs log2(chunk) of each). What makes it fast on a CPU:

    * the state is laid out (b, n, d), so C_t . h_t and B_t . g_t are (1 x n) @ (n x d) products per batch
      element (a GEMV over contiguous d; n innermost would make them slow per-row dot products of 16);
    * every per-token tensor is its own 1 MB allocation, kept in Python lists: one (L, b, n, d) buffer is
      larger than malloc's mmap threshold, so each call would fault in fresh pages (8x slower, measured);
    * a hand-written backward (the reverse recurrence g_t = C_t gy_t + exp(delta_(t+1) A) g_(t+1)), so
      autograd records one node, not L x several tiny ops. Forward keeps the states h_t for it
      (L x b x n x d floats); the decays exp(delta_t A) are recomputed (cheaper than storing them).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        b, L, d = u.shape
        At = (A.t() * _LOG2E).expand(b, -1, -1).contiguous()  # (b, n, d): exp(delta A) = exp2(delta A log2 e)
        dlt = delta.transpose(0, 1).contiguous()  # (L, b, d)
        du = dlt * u.transpose(0, 1)  # (L, b, d)
        BT, CT = B.transpose(0, 1).contiguous(), C.transpose(0, 1).contiguous()  # (L, b, n)
        y = u.new_empty(L, b, 1, d)
        a = torch.empty_like(At)  # (b, n, d) decay exp(delta_t A), one buffer reused
        states = []
        h = None  # h_(t-1): set at t = 0, then updated in place of a new tensor each step
        for t in range(L):
            if t:
                torch.mul(At, dlt[t].unsqueeze(1), out=a).exp2_()
                h = torch.mul(a, h)  # exp(delta_t A) h_(t-1), a new tensor: states keep every h_t
                h.addcmul_(BT[t].unsqueeze(-1), du[t].unsqueeze(1))  # + delta_t u_t B_t
            else:
                h = BT[t].unsqueeze(-1) * du[t].unsqueeze(1)  # (b, n, d)
            states.append(h)
            torch.bmm(CT[t].unsqueeze(1), h, out=y[t])  # (b, 1, d) = C_t . h_t
        ctx.save_for_backward(u, dlt, du, At, BT, CT)
        ctx.states = states
        return y.squeeze(2).transpose(0, 1)  # (b, L, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, dlt, du, At, BT, CT = ctx.saved_tensors
        states = ctx.states  # states[t] = h_t, (b, n, d)
        L, b, d = du.shape
        n = At.shape[1]
        gyT = gy.transpose(0, 1).contiguous()  # (L, b, d)
        dC, dB = gy.new_empty(L, b, 1, n), gy.new_empty(L, b, 1, n)
        ddu, dAd = gy.new_empty(L, b, 1, d), gy.new_zeros(L, b, d)
        dA = torch.zeros_like(At)  # (b, n, d): d(delta_t A) * delta_t summed over t (then over b)
        g, a, p = torch.zeros_like(At), torch.empty_like(At), torch.empty_like(At)  # buffers reused
        for t in range(L - 1, -1, -1):
            if t < L - 1:
                g.mul_(a)  # a = exp(delta_(t+1) A) from the step before
            g.addcmul_(CT[t].unsqueeze(-1), gyT[t].unsqueeze(1))  # g_t = C_t gy_t + exp(delta_(t+1) A) g_(t+1)
            torch.bmm(gyT[t].unsqueeze(1), states[t].transpose(1, 2), out=dC[t])  # (b, 1, n)
            torch.bmm(BT[t].unsqueeze(1), g, out=ddu[t])  # (b, 1, d): grad of delta_t u_t
            torch.bmm(du[t].unsqueeze(1), g.transpose(1, 2), out=dB[t])  # (b, 1, n)
            if t:  # grad of delta_t A: g_t exp(delta_t A) h_(t-1) (the state before t = 0 is zero)
                torch.mul(At, dlt[t].unsqueeze(1), out=a).exp2_()  # exp(delta_t A), recomputed
                torch.mul(g, a, out=p).mul_(states[t - 1])  # (b, n, d)
                dA.addcmul_(p, dlt[t].unsqueeze(1))
                torch.sum(p.mul_(At), 1, out=dAd[t])  # (b, d); At carries log2(e), undone below
        ddu = ddu.squeeze(2)
        ddelta = torch.addcmul(dAd.mul_(_LN2), ddu, u.transpose(0, 1))  # (L, b, d)
        return ((ddu * dlt).transpose(0, 1), ddelta.transpose(0, 1), dA.sum(0).t(), dB.squeeze(2).transpose(0, 1),
                dC.squeeze(2).transpose(0, 1))


def _scan_loop_inference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor) -> torch.Tensor:
    """The token loop without autograd (sampling): y_t = C_t . h_t, nothing kept for a backward.

    One (blk, n, d) state per block of ``blk`` batch elements, updated in place (no allocation per token),
    the batch walked in blocks of at most ``INFERENCE_STATE_ELEMENTS`` state elements so the state stays in
    cache across the L steps: the sampler's batches (cfg doubles them: 1000 at ``eval.batch_size`` 500) would
    otherwise allocate a new state of several MB per token (the mmap threshold again) and stream it through
    memory. Same maths and order of operations as ``_SelectiveScanLoop.forward``. (b, L, d) -> (b, L, d).
    """
    b, L, d = u.shape
    n = A.shape[1]
    At = A.t() * _LOG2E  # (n, d): exp(delta A) = exp2(delta A log2 e)
    dlt = delta.transpose(0, 1).contiguous()  # (L, b, d)
    du = dlt * u.transpose(0, 1)  # (L, b, d)
    BT, CT = B.transpose(0, 1).contiguous(), C.transpose(0, 1).contiguous()  # (L, b, n)
    y = u.new_empty(L, b, 1, d)
    blk = max(1, INFERENCE_STATE_ELEMENTS // (n * d))
    for b0 in range(0, b, blk):
        bs = slice(b0, min(b, b0 + blk))
        m = bs.stop - b0
        Ab = At.expand(m, -1, -1)  # (m, n, d), a view
        a = u.new_empty(m, n, d)  # decay exp(delta_t A), one buffer reused
        h = u.new_zeros(m, n, d)  # the state, updated in place
        for t in range(L):
            torch.mul(Ab, dlt[t, bs].unsqueeze(1), out=a).exp2_()
            h.mul_(a).addcmul_(BT[t, bs].unsqueeze(-1), du[t, bs].unsqueeze(1))  # exp(delta_t A) h + delta_t u_t B_t
            torch.bmm(CT[t, bs].unsqueeze(1), h, out=y[t, bs])  # (m, 1, d) = C_t . h_t
    return y.squeeze(2).transpose(0, 1)  # (b, L, d)


def _selective_inputs(u, delta, delta_bias, delta_softplus):
    u, delta = _up(u), _up(delta)
    if delta_bias is not None:
        delta = delta + _up(delta_bias)
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta


def _selective_output(y, u, D, z, dtype):
    if D is not None:
        y = y + u * _up(D)
    if z is not None:
        y = y * F.silu(_up(z))
    return y.to(dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
    method: Literal["auto", "native", "loop", "chunk"] = "auto",
) -> torch.Tensor:
    """Mamba v1 selective scan, [B, L, D] layout (``selective_scan_ref`` transposed).

    u, delta, z: (b, L, d); A: (d, n) (real, negative); B, C: (b, L, n); D, delta_bias: (d,).
    h_t = exp(delta_t A) h_(t-1) + delta_t u_t B_t;  y_t = C_t . h_t + D u_t;  y *= silu(z).
    ``method``: "native" (the same recurrence fused in C, ``cpu_scan``: CPU tensors, float32/64; "auto" takes
    it where ``cpu_scan.suits`` the input and no ``chunk_size`` is given), "loop" (the token loop, 8x faster
    at the main job's size, see
    benchmarks/bench_mixers_cpu.py; it keeps L x b x d x n floats for the backward), "chunk" (the
    chunked scan, which keeps only one state per chunk of ``chunk_size`` tokens, default
    ``SELECTIVE_SCAN_CHUNK``), or "auto": the loop unless what it keeps exceeds ``LOOP_MAX_SAVED_BYTES``,
    the sequence is long with a small state (``LOOP_MAX_LENGTH``, ``LOOP_MIN_STATE``) or ``chunk_size``
    is given. Without autograd (sampling) the loop keeps nothing and updates one state in place
    (``_scan_loop_inference``). Returns (b, L, d) in u's dtype.
    """
    if u.dim() != 3 or delta.shape != u.shape or B.shape != C.shape or B.shape[:2] != u.shape[:2]:
        raise ValueError(
            f"selective_scan: expected u, delta (b, L, d) and B, C (b, L, n), got u {tuple(u.shape)}, "
            f"delta {tuple(delta.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if method not in ("auto", "native", "loop", "chunk"):
        raise ValueError(f"selective_scan: method must be 'auto', 'native', 'loop' or 'chunk', got {method!r}")
    dtype = u.dtype
    u, delta = _selective_inputs(u, delta, delta_bias, delta_softplus)
    A, B, C = _up(A).to(u.dtype), _up(B).to(u.dtype), _up(C).to(u.dtype)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    if method == "auto":
        b, L, d = u.shape
        saved = u.numel() * A.shape[1] * u.element_size() if grad else 0  # the states the loop keeps
        long_small = L > LOOP_MAX_LENGTH and b * d * A.shape[1] < LOOP_MIN_STATE
        method = ("chunk" if chunk_size is not None else "native" if cpu_scan.suits(u, A.shape[1])
                  else "chunk" if saved > LOOP_MAX_SAVED_BYTES or long_small else "loop")
    if method == "native":
        y = cpu_scan.selective_scan_native(u, delta, A, B, C)
    elif method == "loop" or u.shape[1] == 0:
        y = _SelectiveScanLoop.apply(u, delta, A, B, C) if grad else _scan_loop_inference(u, delta, A, B, C)
    else:
        T = max(1, min(chunk_size or SELECTIVE_SCAN_CHUNK, u.shape[1]))
        y = _SelectiveScan.apply(u, delta, A, B, C, T)
    return _selective_output(y, u, D, z, dtype)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Token-loop twin of ``selective_scan`` (tests only): upstream's ``selective_scan_ref`` maths."""
    dtype = u.dtype
    u, delta = _selective_inputs(u, delta, delta_bias, delta_softplus)
    A, B, C = _up(A), _up(B), _up(C)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (b, d, n)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    return _selective_output(torch.stack(ys, 1), u, D, z, dtype)


# ---------------------------------------------------------------------------------------------------
# Mamba2 SSD (scalar decay per head)
# ---------------------------------------------------------------------------------------------------


def ssd_one_chunk(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None = None) -> torch.Tensor:
    """``ssd_scan`` for a sequence of one chunk (L <= ``SSD_CHUNK``): the same arguments and maths,
    ``y_t = sum_{s <= t} (C_t . B_s) exp(A (dt_{s+1} + ... + dt_t)) dt_s x_s + D x_t``, as one [L, L] matrix
    per head applied to x.

    x: (b, L, h, p); dt: (b, L, h) (> 0); A: (h,) (< 0); B, C: (b, L, g, n), h % g == 0; D: (h,), (h, p) or
    None. Returns (b, L, h, p) in x's dtype. The scores C B^T are formed once per group (never repeated
    over its heads); dt_s and a per-head D join the [L, L] matrix (as its column scale and its diagonal)
    instead of scaling the (b, L, h, p) tensors; the causal mask multiplies after the exp (an exp of -inf
    is slow on a CPU), as in ``linear_attn_ref``'s one-chunk path.
    """
    dtype = x.dtype
    b, L, h, p = x.shape
    g = B.shape[2]
    if h % g:
        raise ValueError(f"ssd_one_chunk: nheads={h} must be a multiple of ngroups={g}")
    x, dt, B, C, A = _up(x), _up(dt), _up(B), _up(C), _up(A)
    keep = torch.ones(L, L, dtype=x.dtype, device=x.device).tril()  # 1 on s <= t
    dt_h = dt.transpose(1, 2).contiguous()  # (b, h, L): small; keeps the [L, L] products below contiguous
    gc = (dt_h * A.unsqueeze(-1)).cumsum(-1)  # (b, h, L) cumulative log-decay, <= 0, non-increasing
    # (b, h, L, L): exp(gc_t - gc_s) dt_s on s <= t (the exponent is zeroed above the diagonal, then masked)
    decay = ((gc.unsqueeze(-1) - gc.unsqueeze(-2)) * keep).exp() * (keep * dt_h.unsqueeze(-2))
    scores = C.transpose(1, 2) @ B.permute(0, 2, 3, 1)  # (b, g, L, L): C_t . B_s
    M = scores * decay if g in (1, h) else (scores.unsqueeze(2) * decay.unflatten(1, (g, h // g))).flatten(1, 2)
    if D is not None and D.dim() == 1:  # the skip D x_t as the diagonal of each head's matrix
        M = M + _up(D)[:, None, None] * torch.eye(L, dtype=x.dtype, device=x.device)
    y = (M @ x.transpose(1, 2)).transpose(1, 2)  # (b, L, h, p)
    if D is not None and D.dim() == 2:  # D per head and channel: (h, p)
        y = y + x * _up(D)
    return y.to(dtype)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk_size: int = SSD_CHUNK,
) -> torch.Tensor:
    """Mamba2 SSD scan (the maths of ``mamba_chunk_scan_combined`` with dt already softplus-ed/clamped).

    x: (b, L, h, p); dt: (b, L, h) (> 0); A: (h,) (< 0); B, C: (b, L, g, n) with h % g == 0;
    D: (h,) or (h, p). h_t = exp(dt_t A) h_(t-1) + dt_t x_t B_t^T; y_t = h_t C_t + D x_t.
    Returns (b, L, h, p) in x's dtype.

    SSD is linear attention with one scalar decay per head: queries C, keys B, values dt * x, log-decay
    dt * A. It runs on the shared chunked op ``linear_attn_ref.chunk_diag_linear_attn`` (in-chunk scores as
    one matrix product, stable factors around each chunk's midpoint; ``chunk_size`` is its largest chunk).
    """
    dtype = x.dtype
    b, L, nh, p = x.shape
    g = B.shape[2]
    if nh % g:
        raise ValueError(f"ssd_scan: nheads={nh} must be a multiple of ngroups={g}")
    if L <= chunk_size:  # one chunk: the same maths as one [L, L] matrix per head
        return ssd_one_chunk(x, dt, A, B, C, D)
    x, dt, B, C = _up(x), _up(dt), _up(B), _up(C)
    if g != nh:  # each group's B, C serve nh / g heads
        B, C = (t.unsqueeze(3).expand(b, L, g, nh // g, t.shape[-1]).reshape(b, L, nh, -1) for t in (B, C))
    y, _ = chunk_diag_linear_attn(C, B, x * dt.unsqueeze(-1), dt * _up(A), scale=1.0, chunk_size=chunk_size)
    if D is not None:
        y = y + x * (_up(D).unsqueeze(-1) if D.dim() == 1 else _up(D))
    return y.to(dtype)


def ssd_scan_naive(x, dt, A, B, C, D=None):
    """Token-loop twin of ``ssd_scan`` (tests only)."""
    dtype = x.dtype
    nh, g = x.shape[2], B.shape[2]
    x, dt, B, C = _up(x), _up(dt), _up(B), _up(C)
    B = B.repeat_interleave(nh // g, dim=2)
    C = C.repeat_interleave(nh // g, dim=2)
    h = x.new_zeros(x.shape[0], nh, x.shape[3], B.shape[-1])  # (b, h, p, n)
    ys = []
    for t in range(x.shape[1]):
        dA = torch.exp(dt[:, t] * _up(A))  # (b, h)
        h = dA[..., None, None] * h + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], B[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + x * (_up(D).unsqueeze(-1) if D.dim() == 1 else _up(D))
    return y.to(dtype)
