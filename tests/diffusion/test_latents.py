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

    from zigscan.diffusion.data import DataInfo
    from zigscan.diffusion.sampling import decode

    info = DataInfo(name="latents", channels=4, image_size=(4, 4), autoencoder="tiny:0",
                    autoencoder_kwargs=AE_KWARGS, scaling_factor=0.5)
    z = torch.randn(3, 4, 4, 4)
    x = decode(z, info)
    assert x.shape == (3, 1, 16, 16) and x.abs().max() <= 1
    ae = load_autoencoder("tiny:0", **AE_KWARGS)
    assert torch.allclose(x, ae.decode(z / 0.5).clamp(-1, 1), atol=1e-6)  # divided by the scale first
    video = decode(torch.randn(2, 4, 3, 4, 4), info)  # [N, c, T, h, w] -> [N, C, T, H, W]
    assert video.shape == (2, 1, 3, 16, 16)
    pixels = torch.randn(2, 1, 8, 8) * 3
    assert torch.equal(decode(pixels, DataInfo(name="image-folder", channels=1, image_size=(8, 8))), pixels.clamp(-1, 1))


def _tiny_autoencoderkl(folder):
    """A randomly initialised diffusers AutoencoderKL (two levels: downsample 2, 1 -> 4 channels), saved
    with save_pretrained as a user's local VAE folder would be."""
    import pytest

    diffusers = pytest.importorskip("diffusers", reason="DiffusersVAE needs `pip install diffusers`")
    import torch

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    vae.save_pretrained(folder)
    return vae


def test_diffusers_autoencoderkl_from_a_local_folder(tmp_path):
    import torch

    from zigscan.diffusion.vae import DiffusersVAE

    ref = _tiny_autoencoderkl(tmp_path / "vae")
    vae = load_autoencoder(str(tmp_path / "vae"))
    assert isinstance(vae, DiffusersVAE)
    assert (vae.in_channels, vae.latent_channels, vae.downsample_factor) == (1, 4, 2)
    assert vae.latent_shape((16, 12)) == (4, 8, 6)
    x = torch.rand(2, 1, 16, 12) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 8, 6)
    torch.testing.assert_close(z, vae.encode(x))  # posterior mean: deterministic
    assert vae.scaling_factor == 0.18215  # from the saved config (LatentsDataset multiplies by it)
    with torch.no_grad():  # the adapter returns diffusers' own (unscaled) posterior mean
        torch.testing.assert_close(vae.vae.encode(x).latent_dist.mode(), ref.eval().encode(x).latent_dist.mode())
    assert vae.decode(z).shape == (2, 1, 16, 12)


def test_train_on_latents_of_a_diffusers_vae(tmp_path):
    _tiny_autoencoderkl(tmp_path / "vae")
    vae = load_autoencoder(str(tmp_path / "vae"))
    images = make_image_folder(tmp_path / "imgs", per_class=6, size=16)
    lat_path = tmp_path / "latents.safetensors"
    precompute_latents(ImageFolder(images, image_size=16, channels=1), vae, lat_path, batch_size=8, progress=False)
    cfg = tiny_config(images, tmp_path / "runs",
                      data={"name": "latents", "root": None, "image_size": None, "kwargs": {"path": str(lat_path)},
                            "autoencoder": str(tmp_path / "vae")},
                      model={"patch_size": 2}, train={"steps": 2}, eval={"at_end": False})
    run = tmp_path / "runs" / "latent"
    trainer = Trainer(config_from_dict(cfg), run, resume=None)
    assert trainer.train()["step"] == 2
    trainer.finish()
    assert Image.open(run / "samples.png").size[1] >= 16 * 2  # decoded 16x16 pixels, not 8x8 latents
