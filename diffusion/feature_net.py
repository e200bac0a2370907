"""The offline feature extractor: a small CNN classifier trained on Fashion-MNIST.

Inception cannot be downloaded here, so FID/KID on Fashion-MNIST use the penultimate features of this
network (``FashionFeatureNet``, 128 numbers an image). Its weights ship with the package in
``assets/fashion_features.safetensors`` (trained by ``scripts/train_feature_net.py``; the file's
metadata records the test accuracy and a checksum of the tensors).

    net = FashionFeatureNet.load_default()        # eval mode, frozen, CPU
    feats = net(images)                           # [B, C, H, W] in [-1, 1] -> [B, 128]
    logits = net.logits(images)                   # [B, 10]

Numbers computed with these features are comparable only with each other, never with Inception FIDs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DEFAULT_WEIGHTS", "FashionFeatureNet", "WeightsError", "tensors_checksum"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "fashion_features.safetensors"
WEIGHTS_FORMAT = "zigscan-fashion-features"
WEIGHTS_VERSION = "1"


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable, corrupt or of the wrong architecture."""


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every tensor (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """A stride-2 conv (halves H and W), batch norm, ReLU."""
    conv = nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionFeatureNet(nn.Module):
    """Conv classifier for 28x28 grayscale images; ``forward`` returns the 128-d penultimate features.

    Input: ``[B, C, H, W]`` in [-1, 1], any C (3 or 4 channels are averaged to gray) and any size
    (resampled to 28x28 with antialiasing). Features are the fc1 outputs before the ReLU, which are closer to
    Gaussian than rectified ones (FID fits Gaussians). Three stride-2 convs keep it cheap to train on a CPU.
    """

    input_size = (28, 28)

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        self.width, self.feature_dim, self.num_classes = width, feature_dim, num_classes
        w = width
        self.body = nn.Sequential(
            _conv(1, w, 5),  # (B, w, 14, 14)
            _conv(w, 2 * w, 3),  # (B, 2w, 7, 7)
            _conv(2 * w, 4 * w, 3),  # (B, 4w, 4, 4)
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (B, 16w): a 2x2 grid keeps the garment's layout
        )  # fmt: skip
        self.fc1 = nn.Linear(16 * w, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.name = f"fashion-features-w{width}"
        self.metadata: dict[str, str] = {}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [-1, 1] -> ``[B, 1, 28, 28]``."""
        if images.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}.")
        x = images.float()
        if x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        return x  # (B, 1, 28, 28)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.to(self.fc1.weight.device))  # (B, 1, 28, 28)
        return self.fc1(self.body(x))  # (B, F)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.forward(images)))  # (B, num_classes)

    # ------------------------------------------------------------------ file io
    def save(self, path: str | os.PathLike, **metadata: object) -> Path:
        """Write the weights and ``metadata`` (values become strings) to a .safetensors file."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {str(k): str(v) for k, v in metadata.items()}
        meta.update(
            format=WEIGHTS_FORMAT,
            version=WEIGHTS_VERSION,
            config=json.dumps(
                {"width": self.width, "feature_dim": self.feature_dim, "num_classes": self.num_classes}
            ),
            sha256=tensors_checksum(state),
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> FashionFeatureNet:
        """Load weights written by ``save``; checks format, architecture and checksum. Eval mode, frozen."""
        path = Path(path)
        fix = "re-install zigscan, or retrain with `python scripts/train_feature_net.py --out PATH`."
        if not path.is_file():
            raise WeightsError(f"feature-net weights {path} not found; {fix}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise WeightsError(
                f"feature-net weights {path} are corrupt or not a safetensors file ({err}); {fix}"
            ) from err
        if meta.get("format") != WEIGHTS_FORMAT:
            raise WeightsError(
                f"{path} is not a zigscan feature-net file: metadata format={meta.get('format')!r}, "
                f"expected {WEIGHTS_FORMAT!r}; {fix}"
            )
        if tensors_checksum(state) != meta.get("sha256"):
            raise WeightsError(
                f"feature-net weights {path} are corrupt: the tensor checksum does not match; {fix}"
            )
        try:
            net = cls(**json.loads(meta["config"]))
            net.load_state_dict(state, strict=True)
        except (KeyError, ValueError, RuntimeError) as err:
            raise WeightsError(
                f"feature-net weights {path} do not fit FashionFeatureNet: {err}; {fix}"
            ) from err
        net.metadata = meta
        return net.to(device).eval().requires_grad_(False)

    @classmethod
    def load_default(cls, device: str | torch.device = "cpu") -> FashionFeatureNet:
        """The weights shipped in ``zigscan/diffusion/assets/fashion_features.safetensors``."""
        return cls.load(DEFAULT_WEIGHTS, device=device)

    @property
    def test_accuracy(self) -> float | None:
        """Fashion-MNIST test accuracy recorded when the weights were trained (None if unknown)."""
        value = self.metadata.get("test_accuracy")
        return float(value) if value is not None else None
