"""The plugin's own tests: zigscan's standard checks, run on the plugin's orders."""

import numpy as np
import torch

from zigscan.scanpaths import get_scanpath, list_scanpaths
from zigscan.scanpaths.testing import check_scanpath
from zigscan_example_plugin.plugin import window_snake


def test_window_snake_passes_the_standard_checks():
    check_scanpath(get_scanpath("window-snake"))


def test_registered_through_the_entry_point():
    assert "window-snake" in list_scanpaths("window*")


def test_window_snake_small_case():
    # 4x4 grid, 2x2 windows: windows (0,0), (0,1), then (1,1), (1,0); a row snake inside each
    expected = [0, 1, 5, 4, 2, 3, 7, 6, 10, 11, 15, 14, 8, 9, 13, 12]
    assert window_snake((4, 4), window=2).tolist() == expected
    assert sorted(window_snake((5, 7)).tolist()) == list(range(35))  # partial windows at the edges


def test_ema_mixer_is_causal():
    from zigscan.backbones import get_mixer

    m = get_mixer("ema", 8)
    x = torch.randn(2, 12, 8)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 5, 8)
    assert torch.allclose(m(x2)[:, :7], y[:, :7], atol=1e-6)
    assert not np.allclose(m(x2)[:, 7:].detach(), y[:, 7:].detach())
