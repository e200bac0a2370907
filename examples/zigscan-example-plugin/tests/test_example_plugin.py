"""The plugin's own tests: zigscan's standard checks, run on the plugin's orders."""

import numpy as np
import torch

from zigscan.scanpaths import get_scanpath, list_scanpaths
from zigscan.scanpaths.testing import check_scanpath
from zigscan_example_plugin.plugin import diagonal_snake


def test_diagonal_snake_passes_the_standard_checks():
    check_scanpath(get_scanpath("diagonal-snake"))


def test_registered_through_the_entry_point():
    assert "diagonal-snake" in list_scanpaths("diag*")


def test_diagonal_snake_small_case():
    # 3x3: d=0: (0,0); d=1 (odd, upward): (1,0),(0,1); d=2 (even, downward): (0,2),(1,1),(2,0); ...
    expected = [0, 3, 1, 2, 4, 6, 7, 5, 8]
    assert diagonal_snake((3, 3)).tolist() == expected
    assert sorted(diagonal_snake((4, 7)).tolist()) == list(range(28))


def test_ema_mixer_is_causal():
    from zigscan.backbones import get_mixer

    m = get_mixer("ema", 8)
    x = torch.randn(2, 12, 8)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 5, 8)
    assert torch.allclose(m(x2)[:, :7], y[:, :7], atol=1e-6)
    assert not np.allclose(m(x2)[:, 7:].detach(), y[:, 7:].detach())
