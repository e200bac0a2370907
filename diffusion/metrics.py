"""Sample-quality metrics: Frechet distance (FID) and kernel inception distance (KID) on any features.

    extractor = build_extractor("fashion-features")        # offline; or build_extractor("torchscript", path=...)
    scores = compute_metrics(samples, reference, extractor) # {"fid": ..., "kid": ..., "kid_std": ..., ...}

``samples`` and ``reference`` are images in [-1, 1]: a tensor ``[N, C, H, W]`` (videos ``[N, C, T, H, W]``
are scored frame by frame), a dataset whose items start with the image, or an iterable of batches.
FID and KID depend on the feature extractor: compare numbers only when the extractor is the same.
``EXTRACTORS`` holds the names that the config key ``eval.extractor`` takes.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "build_extractor",
    "TorchScriptExtractor",
    "compute_metrics",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
]


#################################################################################
#                                 Frechet distance                              #
#################################################################################


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigen-decomposition (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 sigma2) = tr sqrt(A sigma2 A), A = sqrt(sigma1); the inner matrix is symmetric PSD."""
    root1 = _sym_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def _trace_sqrt_product_scipy(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Reference twin: ``scipy.linalg.sqrtm`` of the product, as pytorch-fid computes it."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: nudge the diagonals (pytorch-fid's fix)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(
                f"sqrtm of sigma1 @ sigma2 has a large imaginary part ({imag:.3g}); are both PSD?"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, method: Literal["eigh", "scipy"] = "eigh"
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)``. The default ``"eigh"``
    computes the last term from the symmetric matrix ``sqrt(sigma1) sigma2 sqrt(sigma1)``, whose
    eigenvalues are real and (up to round-off, clipped) non-negative, so no imaginary parts arise;
    ``"scipy"`` is the pytorch-fid computation with ``scipy.linalg.sqrtm`` (drops tiny imaginary parts).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"expected mu1, mu2 [F] and sigma1, sigma2 [F, F] of one size F, got {mu1.shape}, {mu2.shape}, "
            f"{sigma1.shape}, {sigma2.shape}."
        )
    if method == "eigh":
        tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    elif method == "scipy":
        tr_covmean = _trace_sqrt_product_scipy(sigma1, sigma2)
    else:
        raise ValueError(f"method must be 'eigh' or 'scipy', got {method!r}.")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can leave -1e-12 for identical statistics


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and covariance ``[F, F]`` (float64, unbiased) of features ``[N, F]``."""
    f = _as_numpy(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"expected features [N >= 2, F], got shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


#################################################################################
#                            Kernel inception distance                          #
#################################################################################


def _polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / F + coef0) ** degree."""
    m, dim = x.shape
    kxx = (x @ x.T / dim + coef0) ** degree
    kyy = (y @ y.T / dim + coef0) ** degree
    kxy = (x @ y.T / dim + coef0) ** degree
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


def kernel_inception_distance(
    features1: Any,
    features2: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    *,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: the unbiased polynomial-kernel MMD^2 averaged over random subsets; returns ``(mean, std)``.

    Each subset draws ``subset_size`` rows (capped at the smaller feature set) without replacement from
    both ``[N1, F]`` and ``[N2, F]``. Values near 0 mean the same distribution; it can be slightly negative.
    """
    f1, f2 = _as_numpy(features1), _as_numpy(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected features [N1, F] and [N2, F], got {f1.shape} and {f2.shape}.")
    m = min(subset_size, len(f1), len(f2))
    if m < 2 or subsets < 1:
        raise ValueError(
            f"KID needs subsets >= 1 and at least 2 rows a subset, got {subsets} subsets of {m}."
        )
    rng = np.random.default_rng(seed)
    values = np.array([
        _polynomial_mmd(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)], degree, coef0)
        for _ in range(subsets)
    ])  # fmt: skip
    return float(values.mean()), float(values.std())


#################################################################################
#                               Feature extractors                              #
#################################################################################


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images ``[B, C, H, W]`` in [-1, 1] to features ``[B, F]``; ``name`` tags the numbers."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class TorchScriptExtractor:
    """A user's own exported network (e.g. Inception-v3 pool features saved with ``torch.jit.save``).

    Args:
        path: the local TorchScript file (nothing is downloaded); a ``.pt2`` file is read with
            ``torch.export.load`` instead (TorchScript is deprecated in recent PyTorch).
        input_size: resize inputs to this ``(H, W)`` first (299 for Inception); None keeps the size.
        channels: the channel count the network wants; grayscale inputs are repeated to 3, RGB averaged to 1.
        value_range: what the network expects: ``"-1,1"`` (as generated), ``"0,1"`` or ``"0,255"``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        input_size: int | tuple[int, int] | None = None,
        channels: int = 3,
        value_range: Literal["-1,1", "0,1", "0,255"] = "-1,1",
        name: str | None = None,
        device: str | torch.device = "cpu",
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"TorchScript feature extractor {self.path} not found. Export your network with "
                "`torch.jit.save(torch.jit.script(model), path)` (or `torch.export.save(torch.export.export("
                "model, (example,)), 'net.pt2')`) and pass that local file."
            )
        try:
            if self.path.suffix == ".pt2":  # a torch.export program (torch.export.save)
                self.model = torch.export.load(str(self.path)).module().to(device)
            else:
                self.model = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as err:
            raise RuntimeError(
                f"{self.path} is not a loadable TorchScript (.pt) or torch.export (.pt2) file ({err})."
            ) from err
        if value_range not in ("-1,1", "0,1", "0,255"):
            raise ValueError(f"value_range must be '-1,1', '0,1' or '0,255', got {value_range!r}.")
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.channels, self.value_range, self.device = channels, value_range, torch.device(device)
        self.name = name or f"torchscript:{self.path.name}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)  # (B, C, H, W) in [-1, 1]
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x[:, :3].mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"{self.name} wants {self.channels} channels, got images with {x.shape[1]}.")
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        if self.value_range == "0,1":
            x = (x + 1) / 2
        elif self.value_range == "0,255":
            x = (x + 1) * 127.5
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)  # (B, F)


def _fashion_features(device: str | torch.device = "cpu") -> FeatureExtractor:
    """The Fashion-MNIST classifier's 128 penultimate features (weights ship with the package)."""
    from .feature_net import FashionFeatureNet

    return FashionFeatureNet.load_default(device=device)


def _torchscript(path: str | None = None, **kwargs: Any) -> FeatureExtractor:
    if path is None:
        raise ValueError("eval.extractor 'torchscript' needs the network file: set eval.extractor_kwargs.path "
                         "to a local TorchScript (.pt) or torch.export (.pt2) file")
    return TorchScriptExtractor(path, **kwargs)


# name -> factory(**kwargs) of a FeatureExtractor; the names of the config key eval.extractor
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "fashion-features": _fashion_features,
    "torchscript": _torchscript,
}


def build_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """The feature extractor ``name`` (``EXTRACTORS``) built with ``kwargs`` (``eval.extractor_kwargs``)."""
    if name not in EXTRACTORS:
        close = difflib.get_close_matches(str(name), EXTRACTORS, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown feature extractor {name!r}.{hint} Known: {', '.join(EXTRACTORS)}.")
    return EXTRACTORS[name](**kwargs)


#################################################################################
#                                  compute_metrics                              #
#################################################################################


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _batches(source: Any, batch_size: int) -> tuple[Iterator[torch.Tensor], int | None]:
    """Image batches ``[b, C, H, W]`` from a tensor, a dataset (item[0] is the image) or an iterable."""
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if isinstance(source, torch.Tensor):
        return (source[i : i + batch_size] for i in range(0, len(source), batch_size)), len(source)
    if hasattr(source, "get_batch") and hasattr(source, "__len__"):  # FashionMNIST's fast path
        n = len(source)
        return (source.get_batch(slice(i, min(i + batch_size, n)))[0] for i in range(0, n, batch_size)), n
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        from torch.utils.data import DataLoader

        first = source[0]
        collate = (
            (lambda items: torch.stack([it[0] for it in items])) if isinstance(first, (tuple, list)) else None
        )
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate)
        return iter(loader), len(source)
    if isinstance(source, Iterable):
        return ((b[0] if isinstance(b, (tuple, list)) else b) for b in source), None
    raise TypeError(
        f"expected images as a tensor, a dataset or an iterable of batches, got {type(source).__name__}."
    )


def _frames(images: torch.Tensor) -> torch.Tensor:
    """Videos ``[B, C, T, H, W]`` -> frames ``[B*T, C, H, W]``; images pass through."""
    if images.ndim == 5:
        B, C, T, H, W = images.shape
        return images.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    if images.ndim != 4:
        raise ValueError(
            f"expected images [B, C, H, W] or videos [B, C, T, H, W], got shape {tuple(images.shape)}."
        )
    return images


@torch.no_grad()
def extract_features(
    images: Any,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 256,
    limit: int | None = None,
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Features ``[N, F]`` (float64) of every image (every frame for videos), in batches."""
    batches, total = _batches(images, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=min(total, limit) if total and limit else (limit or total), desc=desc, unit="img")
    chunks, count = [], 0
    for batch in batches:
        batch = torch.as_tensor(batch)
        if limit is not None:
            batch = batch[: limit - count]
        feats = extractor(_frames(batch.float()))  # (b, F)
        chunks.append(feats.detach().cpu().double().numpy())
        count += len(batch)
        if bar is not None:
            bar.update(len(batch))
        if limit is not None and count >= limit:
            break
    if bar is not None:
        bar.close()
    if not chunks:
        raise ValueError("no images to extract features from (an empty source).")
    return np.concatenate(chunks)


def compute_metrics(
    samples: Any,
    reference: Any,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 256,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    reference_limit: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID of ``samples`` against ``reference`` (both images in [-1, 1]) under ``extractor``.

    Returns ``{"fid", "kid", "kid_std", "num_samples", "num_reference", "extractor"}``. ``reference``
    may also be precomputed features: a numpy array ``[N, F]``. ``reference_limit`` caps the reference
    images read (e.g. 10000 of the training split).
    """
    sample_feats = extract_features(
        samples, extractor, batch_size=batch_size, progress=progress, desc="samples"
    )
    if isinstance(reference, np.ndarray) and reference.ndim == 2:
        ref_feats = reference.astype(np.float64)
    else:
        ref_feats = extract_features(
            reference,
            extractor,
            batch_size=batch_size,
            limit=reference_limit,
            progress=progress,
            desc="reference",
        )
    if sample_feats.shape[1] != ref_feats.shape[1]:
        raise ValueError(f"feature sizes differ: samples {sample_feats.shape}, reference {ref_feats.shape}.")
    fid = frechet_distance(*feature_statistics(sample_feats), *feature_statistics(ref_feats))
    kid, kid_std = kernel_inception_distance(
        sample_feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    return {
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "num_samples": int(len(sample_feats)),
        "num_reference": int(len(ref_feats)),
        "extractor": getattr(extractor, "name", type(extractor).__name__),
    }
