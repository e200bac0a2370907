"""Datasets for the diffusion trainer: Fashion-MNIST, image folders, moving Fashion-MNIST video, latents.

Every dataset returns float tensors in [-1, 1]: images ``[C, H, W]``, videos ``[C, T, H, W]``, and
items ``(x, label)`` (``(x, label, caption)`` for Fashion-MNIST with ``captions=True``). Each dataset
also tells the trainer what it holds: ``channels``, ``image_size`` ``(H, W)``, ``num_classes`` and,
for video, ``num_frames``.

The embedded default is Fashion-MNIST, read from the four idx files of the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), from ``root=...`` or from the
folder in the environment variable ``ZIGSCAN_FASHION_MNIST``. Nothing is ever downloaded.

The config picks a dataset by name: ``build_dataset("fashion-mnist", split="train", image_size=32)``;
``DATASETS`` holds the names. What a dataset knows about itself beyond its items sits on its class:
``caption(label, index)`` for datasets that caption their items, ``feature_extractor`` for the
feature network FID/KID should use on it. ``DataInfo`` is the typed description of a run's data that
the model, the sampler and eval read (saved in every checkpoint as ``data_info``).
"""

from __future__ import annotations

import difflib
import gzip
import inspect
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from zigscan.scanpaths.registries import UnknownNameError

__all__ = [
    "DATASETS",
    "DataInfo",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNIST",
    "ImageFolder",
    "LatentsDataset",
    "MovingFashionMNIST",
    "build_dataset",
    "fashion_caption",
    "find_fashion_mnist",
    "get_dataset_class",
    "load_fashion_mnist_arrays",
    "precompute_latents",
    "read_idx",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "ZIGSCAN_FASHION_MNIST"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Noun phrases for captions, index-aligned with FASHION_MNIST_CLASSES.
_CAPTION_NOUNS = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
)  # fmt: skip
CAPTION_TEMPLATES = (
    "a photo of {}",
    "a black and white photo of {}",
    "a product image of {}",
    "{} on a dark background",
    "a small grayscale picture of {}",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _as_hw(size: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    """``32 -> (32, 32)``; ``(24, 40) -> (24, 40)``; anything else raises."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{what} must be a positive int or a pair (H, W) of positive ints, got {size!r}.")
    return size  # type: ignore[return-value]


def _to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


#################################################################################
#                              idx files (MNIST format)                         #
#################################################################################

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CACHE: dict[tuple[str, int, int], np.ndarray] = {}
_CACHE_LOCK = threading.Lock()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) into a numpy array; decoded arrays are cached in memory."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
            raise
        raise ValueError(f"{path} is a corrupt gzip file ({type(exc).__name__}: {exc}); reinstall the data "
                         "(`sudo apt-get install --reinstall dataset-fashion-mnist`) or point `root` at good copies") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an idx file: expected the magic bytes 00 00 <dtype> <ndim>, got {raw[:4].hex(' ')}. "
            "Point `root` at the four Fashion-MNIST files (train/t10k images and labels)."
        )
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if ndim else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(
            f"{path} is truncated or corrupt: its header promises shape {dims} ({count * dtype.itemsize} bytes), "
            f"the file holds {len(body)} bytes."
        )
    array = np.frombuffer(body, dtype=dtype).reshape(dims)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    array.flags.writeable = False
    with _CACHE_LOCK:
        _CACHE[key] = array
    return array


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST idx files: ``root``, else $ZIGSCAN_FASHION_MNIST, else Debian's."""
    candidates: list[tuple[Path, str]] = []
    if root is not None:
        candidates.append((Path(root), "root="))
    elif os.environ.get(FASHION_MNIST_ENV):
        candidates.append((Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}="))
    else:
        candidates.append((FASHION_MNIST_DIR, "the Debian package folder "))
    folder, origin = candidates[0]
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    missing = [n for n in names if _idx_path(folder, n) is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {origin}{folder}: missing {', '.join(n + '.gz' for n in missing)}. "
            "Install it with `sudo apt-get install dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DIR}), or pass root=/path/to/folder (or set ${FASHION_MNIST_ENV}) to a folder "
            "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
            "and t10k-labels-idx1-ubyte.gz (gzipped or not)."
        )
    return folder


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist_arrays(
    split: Literal["train", "test"] = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw arrays: images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` (cached, read-only)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}.")
    folder = find_fashion_mnist(root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_idx_path(folder, image_stem))  # type: ignore[arg-type]
    labels = read_idx(_idx_path(folder, label_stem))  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, labels {labels.shape}; "
            "expected [N, H, W] images and [N] labels."
        )
    return images, labels.astype(np.int64)


def fashion_caption(label: int, index: int = 0) -> str:
    """A caption from the class name, e.g. ``"a photo of a sneaker"``; the template depends on ``index``."""
    template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
    return template.format(_CAPTION_NOUNS[int(label)])


#################################################################################
#                                  Fashion-MNIST                                #
#################################################################################


FASHION_FEATURES = "fashion-features"  # the shipped Fashion-MNIST feature net (zigscan.diffusion.metrics)


class FashionMNIST(Dataset):
    """Fashion-MNIST images ``[1, H, W]`` in [-1, 1] with labels 0..9 (``FASHION_MNIST_CLASSES``).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        root: folder with the idx files; default $ZIGSCAN_FASHION_MNIST, else the Debian package folder.
        image_size: output size, int or (H, W); 28 keeps the originals. Larger sizes pad with the
            background (``resize="pad"``, 28 -> 32 adds 2 pixels a side) or resample (``resize="bilinear"``).
        limit: keep only the first ``limit`` images.
        captions: items become ``(image, label, caption)`` with ``fashion_caption(label, index)``.
    """

    caption = staticmethod(fashion_caption)  # (label, index) -> caption, for grids and eval samples
    feature_extractor = FASHION_FEATURES  # the default FID/KID features on this data

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        root: str | os.PathLike | None = None,
        image_size: int | tuple[int, int] = 28,
        limit: int | None = None,
        *,
        captions: bool = False,
        resize: Literal["pad", "bilinear"] = "pad",
    ):
        images, labels = load_fashion_mnist_arrays(split, root)
        if limit is not None:
            if limit <= 0:
                raise ValueError(f"limit must be a positive number of images, got {limit}.")
            images, labels = images[:limit], labels[:limit]
        if resize not in ("pad", "bilinear"):
            raise ValueError(f"resize must be 'pad' or 'bilinear', got {resize!r}.")
        self.split, self.captions, self.resize = split, captions, resize
        self.images, self.labels = images, labels  # uint8 [N, 28, 28], int64 [N]
        self.image_size = _as_hw(image_size, "image_size")
        h0, w0 = images.shape[1:]
        if resize == "pad" and (self.image_size[0] < h0 or self.image_size[1] < w0):
            raise ValueError(
                f"image_size={self.image_size} is smaller than the {h0}x{w0} originals; padding cannot shrink. "
                "Use resize='bilinear' to downsample."
            )
        self.channels, self.num_classes, self.classes = 1, len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[B, 1, 28, 28]`` in [-1, 1] -> ``[B, 1, H, W]``."""
        (H, W), (h0, w0) = self.image_size, x.shape[-2:]
        if (H, W) == (h0, w0):
            return x
        if self.resize == "bilinear":
            return F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        top, left = (H - h0) // 2, (W - w0) // 2
        return F.pad(x, (left, W - w0 - left, top, H - h0 - top), value=-1.0)

    def get_batch(self, indices: Iterable[int] | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast path for many items at once: images ``[B, 1, H, W]`` and labels ``[B]``."""
        idx = np.arange(len(self))[indices] if isinstance(indices, slice) else np.asarray(list(indices))
        x = _to_signed(torch.from_numpy(np.ascontiguousarray(self.images[idx])))  # (B, 28, 28)
        x = x.unsqueeze(1)  # (B, 1, 28, 28)
        return self._transform(x), torch.from_numpy(self.labels[idx].copy())

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"index {index} out of range for FashionMNIST({self.split!r}) of {len(self)} images."
            )
        index = index % len(self)
        x = _to_signed(torch.from_numpy(self.images[index].copy()))[None, None]  # (1, 1, 28, 28)
        image, label = self._transform(x)[0], int(self.labels[index])  # (1, H, W)
        if self.captions:
            return image, label, fashion_caption(label, index)
        return image, label


#################################################################################
#                                  Image folders                                #
#################################################################################


def _load_image(path: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    """Open, resize to cover ``size`` and center-crop; float ``[C, H, W]`` in [-1, 1]."""
    from PIL import Image

    H, W = size
    with Image.open(path) as img:
        img = img.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
        w, h = img.size
        scale = max(H / h, W / w)
        new_w, new_h = max(W, round(w * scale)), max(H, round(h * scale))
        img = img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=None)
        left, top = (new_w - W) // 2, (new_h - H) // 2
        img = img.crop((left, top, left + W, top + H))
        array = np.asarray(img, dtype=np.uint8).reshape(H, W, channels)
    return _to_signed(torch.from_numpy(array.copy()).permute(2, 0, 1))  # (C, H, W)


class ImageFolder(Dataset):
    """Every image under ``root`` (recursive), resized and center-cropped to ``image_size`` ``(H, W)``.

    Labels come from the top-level sub-folders (``class_to_idx``, sorted names); with no sub-folders
    every label is 0. Non-square sizes are fine: images are scaled to cover ``(H, W)``, then cropped.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | tuple[int, int] = 64,
        channels: Literal[1, 3, 4] = 3,
        limit: int | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder root {self.root} is not a folder; pass a folder of images.")
        if channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or 4 (RGBA), got {channels!r}.")
        self.image_size, self.channels = _as_hw(image_size, "image_size"), channels
        files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"ImageFolder found no images under {self.root} (looked recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}). Point root at a folder that holds images."
            )
        top = [p.relative_to(self.root).parts for p in files]
        nested = sorted({parts[0] for parts in top if len(parts) > 1})
        loose = [files[i] for i, parts in enumerate(top) if len(parts) == 1]
        if nested and loose:
            raise ValueError(
                f"ImageFolder {self.root} mixes images at its top level ({loose[0].name}, ...) with class "
                f"sub-folders ({', '.join(nested[:5])}); move the loose images into a sub-folder, or keep "
                "all images in one level for unlabeled data."
            )
        self.classes = tuple(nested)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [(f, self.class_to_idx[p[0]] if nested else 0) for f, p in zip(files, top)]
        if limit is not None:
            self.samples = self.samples[:limit]
        self.num_classes = max(1, len(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = _load_image(path, self.image_size, self.channels)  # (C, H, W)
        except Exception as err:  # PIL raises many types; name the file
            raise OSError(f"ImageFolder could not read {path}: {err}") from err
        return image, label


#################################################################################
#                           Moving Fashion-MNIST (video)                        #
#################################################################################


def _bounce(start: np.ndarray, velocity: np.ndarray, steps: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Positions ``start + velocity * t`` reflected into ``[0, limit]`` (a triangle wave): ``[T, 2]``."""
    raw = start[None] + velocity[None] * steps[:, None]  # (T, 2)
    period = np.maximum(2 * limit, 1)[None]
    q = np.mod(raw, period)
    return np.where(q <= limit[None], q, 2 * limit[None] - q)


class MovingFashionMNIST(Dataset):
    """Videos ``[1, T, H, W]`` of Fashion-MNIST items drifting with constant velocity and bouncing.

    Each item (a 28x28 garment) starts at a random position with an integer velocity of 1..``max_speed``
    pixels per frame along each axis and reflects off the borders, so it never leaves the frame. Items
    are composited by maximum. Everything is drawn from a generator seeded by ``(seed, index)``:
    the same index always gives the same video. The label is the class of the first item.

    Args:
        T: frames per video. size: frame size, int or (H, W), at least 28 on each side.
        items: items per video, an int or an inclusive range ``(lo, hi)`` drawn per video.
        length: number of videos (default: the number of images in the split).
    """

    feature_extractor = FASHION_FEATURES  # frames are Fashion-MNIST items

    def __init__(
        self,
        T: int = 8,
        size: int | tuple[int, int] = 32,
        items: int | tuple[int, int] = 1,
        split: Literal["train", "test"] = "train",
        seed: int = 0,
        *,
        root: str | os.PathLike | None = None,
        length: int | None = None,
        max_speed: int = 3,
    ):
        self.images, self.labels = load_fashion_mnist_arrays(split, root)
        self.image_size = _as_hw(size, "size")
        self.item_size = self.images.shape[1:]
        if T < 1 or max_speed < 1:
            raise ValueError(f"T and max_speed must be >= 1, got T={T}, max_speed={max_speed}.")
        if self.image_size[0] < self.item_size[0] or self.image_size[1] < self.item_size[1]:
            raise ValueError(f"size={self.image_size} must be at least the item size {self.item_size}.")
        lo, hi = (items, items) if isinstance(items, int) else tuple(items)
        if not 1 <= lo <= hi:
            raise ValueError(f"items must be >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {items!r}.")
        self.T, self.items, self.split, self.seed, self.max_speed = T, (lo, hi), split, seed, max_speed
        self.length = len(self.labels) if length is None else int(length)
        self.channels, self.num_frames = 1, T
        self.num_classes, self.classes = len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return self.length

    def trajectory(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item image indices ``[K]`` and top-left positions ``[K, T, 2]`` (row, col) of video ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MovingFashionMNIST of {self.length} videos.")
        rng = np.random.default_rng([self.seed, index])
        count = int(rng.integers(self.items[0], self.items[1] + 1))
        which = rng.integers(0, len(self.labels), size=count)
        limit = np.array(self.image_size) - np.array(self.item_size)  # (2,) largest top-left position
        steps = np.arange(self.T)
        paths = []
        for _ in range(count):
            start = rng.integers(0, limit + 1)  # (2,)
            velocity = rng.integers(1, self.max_speed + 1, size=2) * rng.choice([-1, 1], size=2)
            paths.append(_bounce(start, velocity, steps, limit))
        return which, np.stack(paths).astype(np.int64)  # (K,), (K, T, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        which, paths = self.trajectory(index)
        (H, W), (h, w) = self.image_size, self.item_size
        video = np.zeros((self.T, H, W), dtype=np.uint8)
        for item, path in zip(which, paths):
            for t, (r, c) in enumerate(path):
                np.maximum(
                    video[t, r : r + h, c : c + w], self.images[item], out=video[t, r : r + h, c : c + w]
                )
        return _to_signed(torch.from_numpy(video)).unsqueeze(0), int(self.labels[which[0]])  # (1, T, H, W)


#################################################################################
#                               Precomputed latents                             #
#################################################################################


class LatentsDataset(Dataset):
    """Latents ``[C, h, w]`` (times the scale factor) and labels from a ``.safetensors`` or ``.pt`` file.

    The file holds ``latents`` ``[N, C, h, w]`` (as the autoencoder's encoder produced them, unscaled),
    optional ``labels`` ``[N]`` and the scale factor (safetensors metadata ``scaling_factor`` or a
    ``scaling_factor`` entry of the .pt dict). ``scaling_factor=`` overrides the stored one. Items are
    ``(latent * scaling_factor, label)``; decode samples with ``autoencoder.decode(z / scaling_factor)``.
    """

    def __init__(self, path: str | os.PathLike, scaling_factor: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"latents file {self.path} not found; create it with "
                "zigscan.diffusion.data.precompute_latents(dataset, autoencoder, out_path)."
            )
        latents, labels, stored = _read_latents(self.path)
        if latents.ndim not in (4, 5):
            raise ValueError(
                f"{self.path}: `latents` must be [N, C, h, w] (or [N, C, T, h, w]), got {tuple(latents.shape)}."
            )
        if labels is not None and labels.shape != (latents.shape[0],):
            raise ValueError(
                f"{self.path}: `labels` must be [N={latents.shape[0]}], got {tuple(labels.shape)}."
            )
        self.latents = latents.float()
        self.labels = labels.long() if labels is not None else torch.zeros(len(latents), dtype=torch.long)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else stored)
        self.channels, self.image_size = latents.shape[1], tuple(latents.shape[-2:])
        self.num_classes = int(self.labels.max()) + 1 if labels is not None and len(labels) else 1
        if latents.ndim == 5:
            self.num_frames = latents.shape[2]

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.latents[index] * self.scaling_factor, int(self.labels[index])


def _read_latents(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(latents, labels or None, scaling factor) of a latents file; a file that cannot be read raises a
    ``ValueError`` naming it (not the reader's internal error)."""
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"latents file must end in .safetensors or .pt, got {path.name}.")
    try:
        latents, labels, scale = _read_latents_file(path)
    except (KeyError, ValueError):
        raise
    except Exception as exc:  # safetensors' SafetensorError, pickle / zip errors of torch.load, EOFError...
        raise ValueError(
            f"latents file {path} is corrupt or not a latents file ({type(exc).__name__}: {exc}). Create it "
            "again with zigscan.diffusion.data.precompute_latents(dataset, autoencoder, out_path)."
        ) from None
    if not isinstance(latents, torch.Tensor) or (labels is not None and not isinstance(labels, torch.Tensor)):
        raise ValueError(f"{path}: `latents` (and `labels`) must be tensors, got {type(latents).__name__}.")
    if latents.is_floating_point() and not bool(torch.isfinite(latents).all()):
        raise ValueError(f"{path}: `latents` hold NaN or inf values; training on them would diverge. "
                         "Re-encode the data with precompute_latents.")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{path}: scaling_factor must be a positive finite number, got {scale!r}.")
    return latents, labels, scale


def _read_latents_file(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
            if "latents" not in keys:
                raise KeyError(f"{path} has no tensor `latents` (found {sorted(keys)}).")
            latents = f.get_tensor("latents")
            labels = f.get_tensor("labels") if "labels" in keys else None
        return latents, labels, float(meta.get("scaling_factor", 1.0))
    if path.suffix in (".pt", ".pth"):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "latents" not in blob:
            raise KeyError(f"{path} must hold a dict with a `latents` tensor, got {type(blob).__name__}.")
        return blob["latents"], blob.get("labels"), float(blob.get("scaling_factor", 1.0))
    raise ValueError(f"latents file must end in .safetensors or .pt, got {path.name}.")


@torch.no_grad()
def precompute_latents(
    dataset: Dataset,
    autoencoder: Any,
    out_path: str | os.PathLike,
    batch_size: int = 64,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path:
    """Encode every item of ``dataset`` with ``autoencoder.encode`` and save latents + labels.

    Writes ``latents`` ``[N, c, h, w]`` (unscaled), ``labels`` ``[N]`` and ``scaling_factor``
    (``autoencoder.scaling_factor``) to ``out_path`` (.safetensors or .pt). Returns the path.
    """
    from torch.utils.data import DataLoader

    out_path = Path(out_path)
    if out_path.suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"out_path must end in .safetensors or .pt, got {out_path.name}.")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="encoding latents", unit="batch")
    latents, labels = [], []
    for batch in loader:
        x, y = batch[0], batch[1]  # (B, C, H, W), (B,)
        latents.append(autoencoder.encode(x.to(device)).float().cpu())  # (B, c, h, w)
        labels.append(torch.as_tensor(y).long())
    z, y = torch.cat(latents).contiguous(), torch.cat(labels).contiguous()
    scale = float(getattr(autoencoder, "scaling_factor", 1.0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"latents": z, "labels": y}, str(out_path), metadata={"scaling_factor": repr(scale)})
    else:
        torch.save({"latents": z, "labels": y, "scaling_factor": scale}, out_path)
    return out_path


#################################################################################
#                                     Registry                                  #
#################################################################################

DATASETS: dict[str, type[Dataset]] = {
    "fashion-mnist": FashionMNIST,
    "image-folder": ImageFolder,
    "moving-fashion-mnist": MovingFashionMNIST,
    "latents": LatentsDataset,
}


def get_dataset_class(name: str) -> type[Dataset]:
    """The dataset class of a config name; unknown names raise ``UnknownNameError`` with close matches."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.{hint}",
            name=str(name),
            suggestions=tuple(close),
        )
    return DATASETS[name]


def build_dataset(name: str, **kwargs: Any) -> Dataset:
    """Build a dataset by its config name (``DATASETS`` lists them) with keyword arguments."""
    cls = get_dataset_class(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"dataset {name!r} got unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}."
        )
    return cls(**kwargs)


#################################################################################
#                                 Data description                              #
#################################################################################


@dataclass(frozen=True)
class DataInfo:
    """What the model, the sampler and eval need to know about a run's data; one per run, saved in every
    checkpoint (``state.json`` key ``data_info``) so sampling needs no dataset."""

    name: str  # dataset name (DATASETS)
    channels: int  # C of the model's input (latents: latent channels)
    image_size: tuple[int, int]  # (H, W) of the model's input (latents: the latent grid)
    num_classes: int = 0  # class labels 0..num_classes-1; 0 = unconditional
    num_frames: int | None = None  # video: frames per clip T; None for images
    classes: tuple[str, ...] | None = None  # class names (grid row labels); None = the indices
    captions: bool = False  # text conditioning on the dataset's captions instead of labels
    scaling_factor: float | None = None  # latents: the factor the dataset multiplied in (decode divides)
    autoencoder: str | None = None  # latents: the decoder of samples (config ``data.autoencoder``)
    autoencoder_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: Dataset, *, name: str, captions: bool = False, autoencoder: str | None = None,
                     autoencoder_kwargs: dict[str, Any] | None = None) -> DataInfo:
        """Read channels, size, classes, frames and scaling factor off a built dataset."""
        size = getattr(ds, "image_size", None)
        if size is None:
            size = tuple(ds[0][0].shape[-2:])
        h, w = _as_hw(tuple(int(s) for s in size) if not isinstance(size, int) else size, "image_size")
        classes = getattr(ds, "classes", None)
        scale = getattr(ds, "scaling_factor", None)
        return cls(
            name=name,
            channels=int(getattr(ds, "channels", 1)),
            image_size=(h, w),
            num_classes=int(getattr(ds, "num_classes", 0) or 0),
            num_frames=int(getattr(ds, "num_frames", 0) or 0) or None,
            classes=tuple(str(c) for c in classes) if classes else None,
            captions=bool(captions),
            scaling_factor=float(scale) if scale is not None else None,
            autoencoder=autoencoder,
            autoencoder_kwargs=dict(autoencoder_kwargs or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists), as saved in checkpoints."""
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        """Inverse of ``to_dict`` (a checkpoint's ``data_info``); unknown keys are an error."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"data description has unknown keys {unknown}; expected keys: {sorted(known)}")
        missing = sorted({"name", "channels", "image_size"} - set(data))
        if missing:
            raise ValueError(f"data description lacks {missing} (a checkpoint from an unfinished save?)")
        kw = dict(data)
        kw["image_size"] = _as_hw(tuple(kw["image_size"]) if not isinstance(kw["image_size"], int)
                                  else kw["image_size"], "image_size")
        if kw.get("classes") is not None:
            kw["classes"] = tuple(kw["classes"])
        kw["autoencoder_kwargs"] = dict(kw.get("autoencoder_kwargs") or {})
        return cls(**kw)

    def class_names(self) -> list[str]:
        """Names of classes 0..num_classes-1 (the indices as text where the dataset has no names)."""
        names = list(self.classes or ())
        return [names[i] if i < len(names) else str(i) for i in range(self.num_classes)]

    def caption(self, label: int, index: int = 0) -> str:
        """The dataset's caption of class ``label`` (``index`` picks among its templates)."""
        fn: Callable[[int, int], str] | None = getattr(get_dataset_class(self.name), "caption", None)
        if fn is None:
            raise ValueError(f"dataset {self.name!r} has no captions; set data.captions=false for it")
        return fn(int(label), int(index))

    @property
    def feature_extractor(self) -> str | None:
        """The dataset's own FID/KID feature network (a name of ``metrics.EXTRACTORS``), None if it has none."""
        return getattr(DATASETS.get(self.name), "feature_extractor", None)
