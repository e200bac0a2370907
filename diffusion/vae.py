"""Optional latent autoencoders: diffusion can run on latents instead of pixels.

One interface (``Autoencoder``): ``encode(x)`` maps images ``[B, C, H, W]`` in [-1, 1] to latents
``[B, latent_channels, H/f, W/f]`` (unscaled), ``decode(z)`` maps them back; ``downsample_factor`` is f
and ``scaling_factor`` is the number to multiply latents by before diffusion (Stable Diffusion's 0.18215).

    vae = DiffusersVAE("/models/sd-vae-ft-ema")        # a local folder; never downloads
    path = precompute_latents(dataset, vae, "latents.safetensors")   # zigscan.diffusion.data
    data = LatentsDataset(path)                        # items: latent * scaling_factor

``TinyVAE`` is a small randomly initialised conv autoencoder with the same interface, for tests and
for checking the latent pipeline end to end without any weights.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["Autoencoder", "DiffusersVAE", "TinyVAE"]


class Autoencoder(nn.Module):
    """Interface: ``encode``/``decode`` plus ``latent_channels``, ``downsample_factor``, ``scaling_factor``."""

    in_channels: int
    latent_channels: int
    downsample_factor: int
    scaling_factor: float

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> latents ``[B, c, H/f, W/f]`` (unscaled)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, c, h, w]`` (unscaled) -> images ``[B, C, h*f, w*f]`` in about [-1, 1]."""
        raise NotImplementedError

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(c, H/f, W/f)`` for images of ``(H, W)``; sizes must be divisible by f."""
        H, W = image_size
        f = self.downsample_factor
        if H % f or W % f:
            raise ValueError(f"image size {(H, W)} must be divisible by the downsample factor {f}.")
        return self.latent_channels, H // f, W // f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


#################################################################################
#                              diffusers AutoencoderKL                          #
#################################################################################


class DiffusersVAE(Autoencoder):
    """``diffusers.AutoencoderKL`` loaded from a local folder (``config.json`` + weights); never downloads.

    ``sample_posterior=False`` encodes to the posterior mean (deterministic), True draws a sample.
    ``scaling_factor`` defaults to the one in the model config (0.18215 for SD's VAE).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        scaling_factor: float | None = None,
        sample_posterior: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if importlib.util.find_spec("diffusers") is None:
            raise ImportError(
                "DiffusersVAE needs the `diffusers` package: `pip install diffusers` "
                "(zigscan does not depend on it otherwise)."
            )
        folder = Path(path) / subfolder if subfolder else Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no AutoencoderKL at {folder}: expected a local folder with config.json and "
                "diffusion_pytorch_model.safetensors (as saved by `AutoencoderKL.save_pretrained`). zigscan "
                "never downloads weights; fetch the folder yourself and pass its path."
            )
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(
            str(Path(path)), subfolder=subfolder, local_files_only=True, torch_dtype=dtype
        ).to(device).eval().requires_grad_(False)  # fmt: skip
        config = self.vae.config
        self.in_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        stored = getattr(config, "scaling_factor", None)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else (stored or 0.18215))
        self.sample_posterior = sample_posterior

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        dist = self.vae.encode(x.to(param.device, param.dtype)).latent_dist
        return dist.sample() if self.sample_posterior else dist.mode()  # (B, c, H/f, W/f)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        return self.vae.decode(z.to(param.device, param.dtype)).sample  # (B, C, H, W)


#################################################################################
#                                    TinyVAE                                    #
#################################################################################


class TinyVAE(Autoencoder):
    """A small conv autoencoder (random init): ``log2(downsample_factor)`` stride-2 convs down and up."""

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        downsample_factor: int = 4,
        hidden: int = 32,
        scaling_factor: float = 1.0,
        seed: int | None = 0,
    ):
        super().__init__()
        levels = downsample_factor.bit_length() - 1
        if downsample_factor < 1 or 2**levels != downsample_factor:
            raise ValueError(
                f"downsample_factor must be a power of two (1, 2, 4, 8, ...), got {downsample_factor}."
            )
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.downsample_factor, self.scaling_factor = downsample_factor, float(scaling_factor)
        if seed is not None:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        down: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            down += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.SiLU()]  # halves H, W
        down.append(nn.Conv2d(hidden, latent_channels, 3, padding=1))
        up: list[nn.Module] = [nn.Conv2d(latent_channels, hidden, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            up += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.SiLU()]  # doubles H, W
        up += [nn.Conv2d(hidden, in_channels, 3, padding=1), nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)
        if seed is not None:
            torch.random.set_rng_state(generator_state)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"TinyVAE expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}.")
        self.latent_shape(tuple(x.shape[-2:]))  # checks divisibility
        return self.encoder(x)  # (B, c, H/f, W/f)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, h*f, w*f)


def load_autoencoder(spec: str, **kwargs) -> Autoencoder:
    """An autoencoder from a config string: a local diffusers AutoencoderKL folder (never downloaded),
    or ``"tiny"`` / ``"tiny:SEED"`` for a randomly initialised ``TinyVAE`` (tests, pipelines checks)."""
    if spec == "tiny" or spec.startswith("tiny:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return TinyVAE(seed=seed, **kwargs)
    return DiffusersVAE(spec, **kwargs)
