"""Latent diffusion end to end on CPU: images -> TinyVAE latents on disk -> train on latents -> grids and
eval decoded back to pixels through the configured autoencoder."""

from __future__ import annotations

from PIL import Image
from trainhelp import make_image_folder, tiny_config

from zigscan.diffusion.config import config_from_dict
from zigscan.diffusion.data import ImageFolder, LatentsDataset, precompute_latents
from zigscan.diffusion.trainer import Trainer
from zigscan.diffusion.vae import TinyVAE, load_autoencoder

AE_KWARGS = {"in_channels": 1, "latent_channels": 4, "downsample_factor": 4}


def test_load_autoencoder_tiny_is_deterministic():
    a, b = load_autoencoder("tiny:3", **AE_KWARGS), TinyVAE(seed=3, **AE_KWARGS)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and (pa == pb).all()


def test_train_on_latents_decodes_grids_and_eval(tmp_path):
    images = make_image_folder(tmp_path / "imgs", per_class=6, size=16)
    ds = ImageFolder(images, image_size=16, channels=1)
    lat_path = tmp_path / "latents.safetensors"
    precompute_latents(ds, TinyVAE(seed=0, **AE_KWARGS), lat_path, batch_size=8, progress=False)
    lat = LatentsDataset(lat_path)
    assert lat.channels == 4 and tuple(lat.image_size) == (4, 4)

    cfg = tiny_config(images, tmp_path / "runs",
                      data={"name": "latents", "root": None, "image_size": None,
                            "kwargs": {"path": str(lat_path)},
                            "autoencoder": "tiny:0", "autoencoder_kwargs": AE_KWARGS},
                      model={"patch_size": 1},
                      train={"steps": 2},
                      eval={"at_end": True, "n": 8, "batch_size": 8, "n_reference": 12})
    run = tmp_path / "runs" / "latent"
    trainer = Trainer(config_from_dict(cfg), run, resume=None)
    assert trainer.train()["step"] == 2
    trainer.finish()
    grid = Image.open(run / "samples.png")
    # tiles are decoded pixels (16x16 each, upscaled 4x to 64), not 4x4 latents
    assert grid.size[1] >= 64 * 2
    eval_grid = Image.open(run / "eval_samples.png")
    assert eval_grid.size[1] >= 64
    import json

    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["fid"] >= 0 and metrics["n_samples"] == 8


def test_decode_turns_latents_into_pixels_and_clamps_pixels():
    import torch

    from zigscan.diffusion.sampling import _decode

    info = {"autoencoder": "tiny:0", "autoencoder_kwargs": AE_KWARGS, "scaling_factor": 0.5}
    z = torch.randn(3, 4, 4, 4)
    x = _decode(z, info)
    assert x.shape == (3, 1, 16, 16) and x.abs().max() <= 1
    ae = load_autoencoder("tiny:0", **AE_KWARGS)
    assert torch.allclose(x, ae.decode(z / 0.5).clamp(-1, 1), atol=1e-6)  # divided by the scale first
    video = _decode(torch.randn(2, 4, 3, 4, 4), info)  # [N, c, T, h, w] -> [N, C, T, H, W]
    assert video.shape == (2, 1, 3, 16, 16)
    pixels = torch.randn(2, 1, 8, 8) * 3
    assert torch.equal(_decode(pixels, {}), pixels.clamp(-1, 1))
