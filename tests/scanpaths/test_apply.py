"""arrange / rearrange / fold / transition: gathers that compose, invert and carry gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from zigscan.scanpaths import (
    arrange,
    fold_segments,
    get_scanpath,
    list_scanpaths,
    rearrange,
    scan_apply,
    transition_index,
    unfold_segments,
)

SHAPE2, SHAPE3 = (5, 7), (3, 4, 5)


def _shape(path):
    return SHAPE2 if path.ndim == 2 else SHAPE3


@pytest.mark.parametrize("name", list_scanpaths())
def test_arrange_is_gather_by_order_and_rearrange_inverts_it(name):
    path = get_scanpath(name)
    shape = _shape(path)
    L = path.numel(shape)
    x = torch.randn(2, L, 3)
    xs = arrange(x, name, shape)
    assert torch.equal(xs, x[:, path.order(shape)])
    assert torch.equal(rearrange(xs, path, shape), x)
    assert torch.equal(arrange(rearrange(x, path, shape), path, shape), x)


def test_gradients_flow_through_arrange_and_rearrange():
    path = get_scanpath("hilbert")
    x = torch.randn(2, 35, 4, requires_grad=True)
    w = torch.randn(35, 4)
    (rearrange(arrange(x, path, SHAPE2) * w[None], path, SHAPE2)).sum().backward()
    assert torch.allclose(x.grad, w[path.inverse(SHAPE2)].expand(2, 35, 4))
    torch.autograd.gradcheck(
        lambda t: arrange(t, "zigzag-s3", (2, 3)),
        (torch.randn(1, 6, 2, dtype=torch.double, requires_grad=True),),
    )


def test_fold_unfold_segments():
    x = torch.arange(2 * 12 * 3).reshape(2, 12, 3)
    f = fold_segments(x, 4)
    assert f.shape == (8, 3, 3)
    assert torch.equal(f[1], x[0, 3:6])  # segment 1 of batch 0
    assert torch.equal(unfold_segments(f, 4), x)
    with pytest.raises(ValueError, match="cannot split 12 tokens into 5 equal segments"):
        fold_segments(x, 5)
    with pytest.raises(ValueError, match="not a multiple"):
        unfold_segments(f, 3)


@pytest.mark.parametrize(
    "prev, nxt",
    list(itertools.product(["sweep", "zigzag-s1", "hilbert-s5", "random@3", "spiral"], repeat=2))
    + [("spatial-zigzag-s2", "temporal-reverse"), ("temporal", "video-zigzag"), ("video-zigzag", "temporal")],
)
def test_transition_equals_rearrange_then_arrange(prev, nxt):
    p, n = get_scanpath(prev), get_scanpath(nxt)
    shape = _shape(p)
    x = torch.randn(2, p.numel(shape), 3)
    xs_prev = arrange(x, p, shape)
    idx = transition_index(p, n, shape)
    assert torch.equal(xs_prev[:, idx], arrange(rearrange(xs_prev, p, shape), n, shape))
    assert idx is transition_index(prev, nxt, shape, "cpu")  # cached per (paths, shape, device)


def test_transition_rejects_mixed_dimensions():
    with pytest.raises(ValueError, match="cannot chain 'sweep' \\(2D\\) and 'temporal' \\(3D\\)"):
        transition_index("sweep", "temporal", SHAPE2)


def test_wrong_token_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects tokens \[B, 35, D\], got \[2, 36, 3\]"):
        arrange(torch.randn(2, 36, 3), "sweep", SHAPE2)


def test_scan_apply_runs_each_segment_independently():
    # a causal cumulative sum along the scan: with temporal segments, each site sums over its own frames
    T, H, W = 4, 2, 3
    x = torch.rand(1, T * H * W, 1)
    y = scan_apply(x, "temporal", (T, H, W), lambda s: s.cumsum(1))
    expected = x.reshape(T, H * W).cumsum(0).reshape(1, -1, 1)
    assert torch.allclose(y, expected)
    assert torch.equal(scan_apply(x, "video-zigzag", (T, H, W), lambda s: s), x)


def test_permute_tokens_backward_is_the_inverse_gather():
    """permute_tokens gives the same values and gradients as index_select (whose backward scatters)."""
    import torch

    from zigscan.scanpaths import get_scanpath
    from zigscan.scanpaths.apply import permute_tokens

    path = get_scanpath("hilbert-s3")
    order, inv = path.order((6, 10)), path.inverse((6, 10))
    x = torch.randn(3, 60, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 60, 5, dtype=torch.float64)
    y1 = permute_tokens(x, order, inv)
    (gx1,) = torch.autograd.grad((y1 * g).sum(), x)
    y2 = x.index_select(1, order)
    (gx2,) = torch.autograd.grad((y2 * g).sum(), x)
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2)
    assert torch.autograd.gradcheck(lambda t: permute_tokens(t, order, inv), (x[:1, :, :2].detach().requires_grad_(),))
