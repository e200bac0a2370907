"""Video paths (temporal inverse regression, video-zigzag through the volume) and seeded random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zigscan.scanpaths import arrange, fold_segments, get_scanpath, rearrange
from zigscan.scanpaths.orders.randperm import RandomScanPath
from zigscan.scanpaths.testing import step_is_neighbour


def _frame_ids(T, H, W):
    return torch.arange(T).repeat_interleave(H * W).float()[None, :, None]  # (1, L, 1) value = frame


@pytest.mark.parametrize("name", ["temporal", "temporal-reverse"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (5, 2, 3), (4, 1, 1), (1, 2, 2)])
def test_temporal_inverse_puts_frame_t_back_on_frame_t(name, shape):
    T, H, W = shape
    x = _frame_ids(T, H, W)
    path = get_scanpath(name)
    xs = fold_segments(arrange(x, path, shape), path.segments(shape))  # (H*W, T, 1)
    expected = torch.arange(T).float() if name == "temporal" else torch.arange(T - 1, -1, -1).float()
    assert torch.equal(xs[..., 0], expected.expand(H * W, T))  # each segment runs along time
    y = rearrange(arrange(x, path, shape), path, shape)
    assert torch.equal(y, x)  # frame t lands back on frame t (the original code sent it to T-1-t)


def test_temporal_segments_are_spatial_sites():
    path = get_scanpath("temporal")
    T, H, W = 3, 2, 5
    order = path.order((T, H, W)).numpy().reshape(H * W, T)
    assert path.segments((T, H, W)) == H * W
    assert (order % (H * W) == np.arange(H * W)[:, None]).all()  # one site per segment


def test_video_zigzag_is_one_continuous_path_entering_where_last_frame_ended():
    for shape in [(4, 3, 5), (3, 4, 4), (5, 1, 6), (2, 7, 1)]:
        T, H, W = shape
        path = get_scanpath("video-zigzag")
        order = path.order(shape).numpy()
        assert path.segments(shape) == 1
        assert step_is_neighbour(order, shape).all(), shape
        frames = order // (H * W)
        assert (frames == np.repeat(np.arange(T), H * W)).all()  # frame by frame
        first = order[: H * W] % (H * W)
        assert first.tolist() == get_scanpath("zigzag-s0").order((H, W)).tolist()  # frame 0 = zigzag-s0


@pytest.mark.parametrize("k", range(8))
def test_spatial_zigzag_scans_each_frame_by_zigzag_sk(k):
    T, H, W = 3, 4, 5
    path = get_scanpath(f"spatial-zigzag-s{k}")
    order = path.order((T, H, W)).numpy().reshape(T, H * W)
    zz = get_scanpath(f"zigzag-s{k}").order((H, W)).numpy()
    assert path.segments((T, H, W)) == T
    assert (order == zz[None] + np.arange(T)[:, None] * H * W).all()


def test_random_reproducible_by_seed_and_different_across_seeds():
    a = RandomScanPath(3).order((16, 16))
    b = RandomScanPath(3).order((16, 16))  # a fresh instance: same seed, same order
    c = RandomScanPath(4).order((16, 16))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(RandomScanPath().order((16, 16)), torch.arange(256))


def test_random_seed_is_part_of_the_name():
    p = get_scanpath("random@7")
    assert p.name == "random@7" and p.seed == 7
    assert get_scanpath(p.name) is p  # a saved name finds the same path again
    assert get_scanpath("random").seed == 0 and get_scanpath("random@0") is get_scanpath("random")
    assert torch.equal(p.order((5, 6)), RandomScanPath(7).order((5, 6)))
    with pytest.raises(ValueError, match="integer seed"):
        get_scanpath("random@x")
    with pytest.raises(ValueError, match="seed must be an int"):
        RandomScanPath(-1)
