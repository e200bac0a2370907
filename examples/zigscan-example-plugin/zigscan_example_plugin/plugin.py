"""The example plugin: everything a third-party package needs to add names to zigscan.

Registered through the entry point ``example`` (pyproject.toml). Adds:

* scan path ``window-snake``: a local-window scan: the grid is cut into 4x4 windows, each window is
  scanned as a row snake, and the windows are visited in row-snake order (partial windows at the edges
  are fine). Neighbours inside a window stay close in the sequence; jumps between windows make it not
  continuous;
* schedule ``window-4``: window-snake, zigzag-s1, window-snake, zigzag-s5, cycled over depth;
* mixer ``ema``: a causal exponential moving average with a learned per-channel decay (pure PyTorch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zigscan.backbones import MixerSpec
from zigscan.backbones.mixers import Mixer
from zigscan.plugins import hookimpl
from zigscan.scanpaths import FunctionScanPath
from zigscan.scanpaths.schedules import Schedule


def window_snake(shape: tuple[int, int], window: int = 4) -> np.ndarray:
    """Row-snake inside each ``window`` x ``window`` block; blocks visited in row-snake order."""
    H, W = shape
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    br, bc, lr, lc = r // window, c // window, r % window, c % window
    n_bc = -(-W // window)  # windows per row (the last one may be partial)
    block = br * n_bc + np.where(br % 2 == 0, bc, n_bc - 1 - bc)  # (H, W): window's visiting rank
    inner = lr * window + np.where(lr % 2 == 0, lc, window - 1 - lc)  # (H, W): rank inside the window
    key = block * window * window + inner  # unique per cell
    return np.argsort(key.ravel(), kind="stable")  # order[k] = raster index of step k


class EMAMixer(Mixer):
    """y_t = proj(a * y_{t-1} + (1 - a) * x_t), a = sigmoid(decay) per channel; computed in parallel."""

    def __init__(self, d_model: int, impl: str = "auto", *, init_decay: float = 2.0) -> None:
        super().__init__(d_model, impl="reference" if impl == "auto" else impl)
        self.decay = nn.Parameter(torch.full((d_model,), float(init_decay)))
        self.proj = nn.Linear(d_model, d_model)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        log_a = torch.nn.functional.logsigmoid(self.decay.float())  # (D,) log of the decay a
        j = torch.arange(L, device=x.device, dtype=torch.float32)
        kernel = (j[:, None] * log_a).exp() * (1 - log_a.exp())  # (L, D): weight of x_(t-j) in y_t
        n = 2 * L  # zero-padded FFT: a causal convolution, O(L log L), no wrap-around
        y = torch.fft.irfft(torch.fft.rfft(x.float(), n=n, dim=1) * torch.fft.rfft(kernel, n=n, dim=0), n=n, dim=1)
        return self.proj(y[:, :L].to(x.dtype))  # (B, L, D)


@hookimpl
def zigscan_register_scanpaths() -> list:
    return [FunctionScanPath("window-snake", window_snake, continuous=False)]


@hookimpl
def zigscan_register_schedules() -> list:
    return [
        Schedule(
            "window-4",
            ["window-snake", "zigzag-s1", "window-snake", "zigzag-s5"],
            description="example plugin: local-window snake alternating with two zigzags",
        )
    ]


@hookimpl
def zigscan_register_mixers() -> list:
    return [MixerSpec("ema", EMAMixer, "example plugin: causal per-channel exponential moving average")]
