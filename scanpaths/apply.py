"""Applying scan paths to token tensors ``x [B, L, D]`` (raster order), autograd-safe (pure gathers).

Paper Eq. 1-3: arrange ``xs = x[:, order]``; fold the ``S`` segments into the batch
``[B*S, L/S, D]``; run the mixer; unfold; rearrange ``y = ys[:, inv]``. Between two layers the
rearrange of one path and the arrange of the next compose into ONE gather, ``transition_index``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from .base import ScanPath, Shape, check_shape
from .registry import get_scanpath

__all__ = [
    "permute_tokens",
    "arrange",
    "rearrange",
    "fold_segments",
    "unfold_segments",
    "transition_index",
    "scan_apply",
]

PathLike = ScanPath | str


def _path(path: PathLike) -> ScanPath:
    return get_scanpath(path) if isinstance(path, str) else path


def _check_tokens(x: torch.Tensor, path: ScanPath, shape: Shape) -> None:
    L = path.numel(shape)
    if x.dim() != 3 or x.shape[1] != L:
        raise ValueError(
            f"scan path {path.name!r} on grid {tuple(shape)} expects tokens [B, {L}, D], got "
            f"{list(x.shape)}. Flatten the grid in raster order first (e.g. x.flatten(2).transpose(1, 2))."
        )


class _PermuteTokens(torch.autograd.Function):
    """``x[:, perm]`` whose backward is the gather ``grad[:, inv]``: the adjoint of a permutation is its
    inverse. Plain ``index_select`` backpropagates with a scatter-add (``index_add_``, atomics on GPU),
    which is slower than a second gather and not deterministic on CUDA."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return x.index_select(1, perm)  # (B, L, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inv,) = ctx.saved_tensors
        return grad.index_select(1, inv), None, None  # (B, L, D)


def permute_tokens(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Tokens ``x [B, L, D]`` -> ``x[:, perm]``, given the inverse permutation ``inv`` (``inv[perm[k]] == k``)
    for a backward pass that is a gather too."""
    return _PermuteTokens.apply(x, perm, inv)


def arrange(x: torch.Tensor, path: PathLike, shape: Sequence[int]) -> torch.Tensor:
    """Raster order -> scan order: ``x[:, order]``. [B, L, D] -> [B, L, D]."""
    path = _path(path)
    _check_tokens(x, path, shape)
    return permute_tokens(x, path.order(shape, device=x.device), path.inverse(shape, device=x.device))  # (B, L, D)


def rearrange(xs: torch.Tensor, path: PathLike, shape: Sequence[int]) -> torch.Tensor:
    """Scan order -> raster order: ``xs[:, inv]``. [B, L, D] -> [B, L, D]."""
    path = _path(path)
    _check_tokens(xs, path, shape)
    return permute_tokens(xs, path.inverse(shape, device=xs.device), path.order(shape, device=xs.device))  # (B, L, D)


def fold_segments(xs: torch.Tensor, segments: int) -> torch.Tensor:
    """Fold ``S`` equal, contiguous segments into the batch: [B, L, D] -> [B*S, L/S, D]."""
    B, L, D = xs.shape
    if segments < 1 or L % segments:
        raise ValueError(
            f"cannot split {L} tokens into {segments} equal segments (L must be a multiple of S)"
        )
    return xs.reshape(B * segments, L // segments, D)  # (B*S, L/S, D)


def unfold_segments(ys: torch.Tensor, segments: int) -> torch.Tensor:
    """Inverse of ``fold_segments``: [B*S, L/S, D] -> [B, L, D]."""
    BS, Ls, D = ys.shape
    if segments < 1 or BS % segments:
        raise ValueError(f"batch {BS} is not a multiple of the {segments} segments folded into it")
    return ys.reshape(BS // segments, segments * Ls, D)  # (B, L, D)


_TRANSITIONS: dict[tuple, torch.Tensor] = {}
_TRANSITIONS_LOCK = threading.Lock()


def transition_index(
    prev_path: PathLike, next_path: PathLike, shape: Sequence[int], device: torch.device | str | None = None
) -> torch.Tensor:
    """The one gather index taking tokens in ``prev``'s scan order to ``next``'s scan order:
    ``xs_next = xs_prev[:, idx]`` with ``idx = inv_prev[order_next]`` (LongTensor [L], cached per
    (paths, shape, device)). Equals rearranging by prev, then arranging by next."""
    prev, nxt = _path(prev_path), _path(next_path)
    if prev.ndim != nxt.ndim:
        raise ValueError(f"cannot chain {prev.name!r} ({prev.ndim}D) and {nxt.name!r} ({nxt.ndim}D)")
    shape_t = check_shape(shape, prev.ndim, prev.name)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (prev, nxt, shape_t, str(dev))
    hit = _TRANSITIONS.get(key)
    if hit is None:
        with _TRANSITIONS_LOCK:
            idx = prev.inverse(shape_t, device=dev)[nxt.order(shape_t, device=dev)]  # [L]
            hit = _TRANSITIONS.setdefault(key, idx)
    return hit


def scan_apply(
    x: torch.Tensor, path: PathLike, shape: Sequence[int], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Reference of a scan-permuted mixer: arrange, fold segments, ``fn`` on [B*S, L/S, D], unfold,
    rearrange. [B, L, D] -> [B, L, D]."""
    path = _path(path)
    S = path.segments(shape)
    xs = fold_segments(arrange(x, path, shape), S)  # (B*S, L/S, D)
    ys = unfold_segments(fn(xs), S)  # (B, L, D)
    return rearrange(ys, path, shape)  # (B, L, D)
