"""Datasets: idx reading, Fashion-MNIST options, image folders, moving video, latents, the registry."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from zigscan.diffusion.data import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMNIST,
    ImageFolder,
    LatentsDataset,
    MovingFashionMNIST,
    build_dataset,
    fashion_caption,
    precompute_latents,
    read_idx,
)
from zigscan.diffusion.vae import TinyVAE

REAL = all(
    (FASHION_MNIST_DIR / f"{n}.gz").is_file() for n in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
)
needs_real = pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")


def write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: 00 00 08 ndim, big-endian dims, raw uint8 data (gzipped)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path):
    """A fake Fashion-MNIST: 40 train / 12 test random 28x28 images with labels 0..9."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


# ----------------------------------------------------------------------------- idx + Fashion-MNIST
def test_read_idx_round_trip(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (5, 3, 7)).astype(np.uint8)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "raw").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "raw"), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((4, 28, 28)))
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "png")


def test_fashion_mnist_items(fake_root):
    data = FashionMNIST("train", root=fake_root)
    raw = read_idx(fake_root / "train-images-idx3-ubyte.gz")
    assert len(data) == 40 and data.channels == 1 and data.num_classes == 10
    image, label = data[13]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    torch.testing.assert_close(image[0], torch.from_numpy(raw[13].astype(np.float32)) / 127.5 - 1)
    assert len(FashionMNIST("test", root=fake_root, limit=5)) == 5


def test_fashion_mnist_pad_and_resize(fake_root):
    base = FashionMNIST("train", root=fake_root)[2][0]
    padded = FashionMNIST("train", root=fake_root, image_size=32)[2][0]
    assert padded.shape == (1, 32, 32)
    torch.testing.assert_close(padded[:, 2:30, 2:30], base)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (padded[0][border] == -1).all()
    resized = FashionMNIST("train", root=fake_root, image_size=(20, 36), resize="bilinear")[2][0]
    assert resized.shape == (1, 20, 36) and resized.min() >= -1 - 1e-5 and resized.max() <= 1 + 1e-5
    batch, labels = FashionMNIST("train", root=fake_root, image_size=32).get_batch([2, 5])
    torch.testing.assert_close(batch[0], padded)
    assert labels.tolist() == [2, 5]
    with pytest.raises(ValueError, match="bilinear"):
        FashionMNIST("train", root=fake_root, image_size=16)


def test_captions_are_deterministic_and_name_the_class(fake_root):
    data = FashionMNIST("train", root=fake_root, captions=True)
    image, label, caption = data[7]
    assert caption == data[7][2] == fashion_caption(label, 7)
    assert "sneaker" in caption and label == 7 and FASHION_MNIST_CLASSES[7] == "Sneaker"
    templates = {fashion_caption(9, i) for i in range(10)}
    assert len(templates) > 1 and all("an ankle boot" in c for c in templates)


def test_root_from_environment_and_missing_files(fake_root, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZIGSCAN_FASHION_MNIST", str(fake_root))
    assert len(FashionMNIST("test")) == 12
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        FashionMNIST(root=empty)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "root" in str(err.value)


@needs_real
def test_real_debian_files():
    train, test = FashionMNIST("train"), FashionMNIST("test", image_size=32)
    assert len(train) == 60000 and len(test) == 10000
    labels = np.bincount(train.labels, minlength=10)
    assert (labels == 6000).all()
    image, label = test[0]
    assert image.shape == (1, 32, 32) and 0 <= label < 10 and image.min() == -1 and image.max() > 0.5


# ----------------------------------------------------------------------------- image folders
def _png(path, size, color, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_sizes_labels_and_channels(tmp_path):
    _png(tmp_path / "cats" / "a.png", (50, 30), (255, 0, 0))
    _png(tmp_path / "cats" / "deep" / "b.jpg", (17, 90), (0, 255, 0))
    _png(tmp_path / "dogs" / "c.png", (64, 64), 128, mode="L")
    data = ImageFolder(tmp_path, image_size=(24, 40))
    assert data.class_to_idx == {"cats": 0, "dogs": 1} and len(data) == 3 and data.num_classes == 2
    labels = sorted(label for _, label in data)
    assert labels == [0, 0, 1]
    for image, _ in data:
        assert image.shape == (3, 24, 40) and image.min() >= -1 and image.max() <= 1
    red = data[0][0]
    torch.testing.assert_close(red.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02, rtol=0)
    gray = ImageFolder(tmp_path, image_size=16, channels=1)[2][0]
    assert gray.shape == (1, 16, 16)


def test_image_folder_center_crop(tmp_path):
    from PIL import Image

    wide = np.zeros((50, 100), dtype=np.uint8)  # H=50, W=100: white middle 50 columns, black sides
    wide[:, 25:75] = 255
    Image.fromarray(wide).save(tmp_path / "w.png")
    image, label = ImageFolder(tmp_path, image_size=20, channels=1)[0]
    assert label == 0 and image.shape == (1, 20, 20)
    assert image[:, :, 2:-2].min() > 0.9  # the crop keeps the white middle


def test_image_folder_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path)
    _png(tmp_path / "loose.png", (8, 8), 0, mode="L")
    _png(tmp_path / "sub" / "x.png", (8, 8), 0, mode="L")
    with pytest.raises(ValueError, match="sub-folder"):
        ImageFolder(tmp_path)


# ----------------------------------------------------------------------------- moving video
def _center_of_mass(frame: torch.Tensor) -> np.ndarray:
    w = (frame + 1).double()  # background -1 -> weight 0
    rows, cols = torch.meshgrid(torch.arange(frame.shape[0]), torch.arange(frame.shape[1]), indexing="ij")
    return np.array([(w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()])


def test_moving_items_in_bounds_constant_velocity_and_bounce(fake_root):
    data = MovingFashionMNIST(T=16, size=(36, 44), items=1, root=fake_root, length=30, seed=3)
    bounced = 0
    for index in range(len(data)):
        video, label = data[index]
        which, paths = data.trajectory(index)
        assert video.shape == (1, 16, 36, 44) and label == int(data.labels[which[0]])
        assert (paths >= 0).all() and (paths[..., 0] <= 36 - 28).all() and (paths[..., 1] <= 44 - 28).all()
        # the pixels move with the trajectory: centre of mass = item's centre of mass + position
        offset = _center_of_mass(video[0, 0]) - paths[0, 0]
        for t in range(16):
            np.testing.assert_allclose(_center_of_mass(video[0, t]) - paths[0, t], offset, atol=1e-6)
        steps = np.diff(paths[0], axis=0)  # (T-1, 2)
        for a in range(2):
            run = steps[:, a]
            speed = np.abs(run).max()
            assert speed >= 1 and (np.abs(run) <= speed).all()
            pos, limit = paths[0, :, a], data.image_size[a] - 28
            for k in range(1, len(run)):
                if abs(run[k - 1]) == speed and 0 <= pos[k] + run[k - 1] <= limit:
                    assert run[k] == run[k - 1]  # a full step with room ahead: the velocity holds
                elif run[k] != run[k - 1]:
                    bounced += 1
                if abs(run[k]) < speed:  # a step cut short by a reflection happens next to a wall
                    assert pos[k] - speed < 0 or pos[k] + speed > limit
    assert bounced > 0


def test_moving_is_deterministic_per_index(fake_root):
    a = MovingFashionMNIST(T=5, size=32, items=(1, 2), root=fake_root, length=10, seed=1)
    b = MovingFashionMNIST(T=5, size=32, items=(1, 2), root=fake_root, length=10, seed=1)
    torch.testing.assert_close(a[4][0], b[4][0])
    torch.testing.assert_close(a[4][0], a[4][0])
    assert not torch.equal(a[4][0], a[5][0])
    counts = {len(a.trajectory(i)[0]) for i in range(10)}
    assert counts == {1, 2}
    assert not torch.equal(
        a[4][0], MovingFashionMNIST(T=5, root=fake_root, length=10, seed=2, items=(1, 2))[4][0]
    )


# ----------------------------------------------------------------------------- latents
class _Images(torch.utils.data.Dataset):
    def __init__(self, n=10):
        self.x = torch.rand(n, 3, 16, 24) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_precompute_and_load_latents(tmp_path, suffix):
    vae = TinyVAE(in_channels=3, latent_channels=4, downsample_factor=4, scaling_factor=0.5)
    images = _Images()
    path = precompute_latents(images, vae, tmp_path / f"lat{suffix}", batch_size=4)
    data = LatentsDataset(path)
    assert len(data) == 10 and data.channels == 4 and data.image_size == (4, 6) and data.scaling_factor == 0.5
    with torch.no_grad():
        expected = vae.encode(images.x[7:8])[0]
    latent, label = data[7]
    torch.testing.assert_close(latent, expected * 0.5, atol=1e-5, rtol=1e-5)
    assert label == 1
    assert LatentsDataset(path, scaling_factor=2.0)[7][0].sub(expected * 2).abs().max() < 1e-4
    assert vae.decode(latent[None] / 0.5).shape == (1, 3, 16, 24)


def test_latents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="precompute_latents"):
        LatentsDataset(tmp_path / "none.safetensors")
    torch.save({"z": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="latents"):
        LatentsDataset(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="divisible"):
        TinyVAE(downsample_factor=4).encode(torch.zeros(1, 3, 10, 12))


def test_autoencoder_interface_and_diffusers_errors(tmp_path):
    import importlib.util

    from zigscan.diffusion.vae import Autoencoder, DiffusersVAE

    vae = TinyVAE(in_channels=1, latent_channels=2, downsample_factor=8)
    assert isinstance(vae, Autoencoder) and vae.latent_shape((32, 48)) == (2, 4, 6)
    z = vae.encode(torch.zeros(2, 1, 32, 48))
    assert z.shape == (2, 2, 4, 6) and vae.decode(z).shape == (2, 1, 32, 48)
    torch.testing.assert_close(
        TinyVAE(seed=5).encode(torch.ones(1, 3, 8, 8)), TinyVAE(seed=5).encode(torch.ones(1, 3, 8, 8))
    )
    if importlib.util.find_spec("diffusers") is None:
        with pytest.raises(ImportError, match="pip install diffusers"):
            DiffusersVAE(tmp_path)
    else:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            DiffusersVAE(tmp_path / "missing")


# ----------------------------------------------------------------------------- registry
def test_build_dataset(fake_root):
    assert set(DATASETS) == {"fashion-mnist", "image-folder", "moving-fashion-mnist", "latents"}
    data = build_dataset("fashion-mnist", split="test", root=fake_root, image_size=32)
    assert isinstance(data, FashionMNIST) and data[0][0].shape == (1, 32, 32)
    with pytest.raises(KeyError, match="fashion-mnist") as err:
        build_dataset("fashion_mnist")
    assert "Did you mean" in str(err.value) and "image-folder" in str(err.value)
    with pytest.raises(TypeError, match="image_sise.*allowed: split, root, image_size"):
        build_dataset("fashion-mnist", image_sise=32)
