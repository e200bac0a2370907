"""Metrics: Frechet distance, KID, compute_metrics, the shipped feature net and TorchScript extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zigscan.diffusion.data import FASHION_MNIST_DIR, FashionMNIST
from zigscan.diffusion.feature_net import DEFAULT_WEIGHTS, FashionFeatureNet, WeightsError
from zigscan.diffusion.metrics import (
    FeatureExtractor,
    TorchScriptExtractor,
    compute_metrics,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
)

REAL = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def random_psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


# ----------------------------------------------------------------------------- Frechet distance
@pytest.mark.parametrize("method", ["eigh", "scipy"])
def test_frechet_closed_form_commuting_covariances(method):
    """Covariances Q diag(a) Q^T and Q diag(b) Q^T commute: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(
        expected, rel=1e-9
    )
    q = rotation(rng, d)
    value = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method=method)
    assert value == pytest.approx(expected, rel=1e-7)


def test_frechet_one_dimensional():
    # N(0, 4) vs N(3, 1): 9 + (2 - 1)^2 = 10
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10.0)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 24), rank=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_frechet_zero_for_identical_and_symmetric(d, rank, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = random_psd(rng, d, min(rank, d)), random_psd(rng, d)  # s1 may be singular
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * (1 + np.trace(s1)))
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert forward == pytest.approx(backward, rel=1e-7, abs=1e-9)
    assert forward >= np.sum((mu1 - mu2) ** 2) - 1e-9  # the covariance term is a squared distance


def test_frechet_eigh_matches_scipy_reference():
    rng = np.random.default_rng(3)
    for d in (2, 10, 64):
        s1, s2 = random_psd(rng, d), random_psd(rng, d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        fast = frechet_distance(mu1, s1, mu2, s2)
        assert fast == pytest.approx(frechet_distance(mu1, s1, mu2, s2, method="scipy"), rel=1e-6)


def test_frechet_shape_errors():
    with pytest.raises(ValueError, match=r"\[F, F\]"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_feature_statistics_matches_numpy():
    f = np.random.default_rng(0).standard_normal((50, 6))
    mu, sigma = feature_statistics(torch.from_numpy(f))
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.T))


# ----------------------------------------------------------------------------- KID
def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((600, 32)), rng.standard_normal((600, 32))
    same, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3 and same_std >= 0
    assert shifted > 0.05 and shifted > 20 * abs(same)


def test_kid_unbiased_estimator_by_hand():
    """One subset covering all rows: compare with a direct double loop over pairs."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 1
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    value, std = kernel_inception_distance(x, y, subsets=1, subset_size=100)
    assert value == pytest.approx(xx + yy - 2 * xy) and std == 0


# ----------------------------------------------------------------------------- compute_metrics
class MeanPool:
    """A toy extractor: 4x4 average pooling of 16x16 images -> 16 features."""

    name = "mean-pool"

    def __call__(self, images):
        return torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 4).flatten(1)


def test_compute_metrics_orders_same_below_shifted():
    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(400, 1, 16, 16, generator=gen) * 2 - 1
    same = torch.rand(300, 1, 16, 16, generator=gen) * 2 - 1
    shifted = (same * 0.5 + 0.3).clamp(-1, 1)
    assert isinstance(MeanPool(), FeatureExtractor)
    good = compute_metrics(
        same, reference, MeanPool(), batch_size=64, kid_subsets=10, kid_subset_size=100, progress=False
    )
    bad = compute_metrics(
        shifted, reference, MeanPool(), batch_size=64, kid_subsets=10, kid_subset_size=100, progress=False
    )
    assert (
        set(good) >= {"fid", "kid", "kid_std"}
        and good["num_samples"] == 300
        and good["extractor"] == "mean-pool"
    )
    assert good["fid"] < 0.1 * bad["fid"] and bad["kid"] > 10 * abs(good["kid"])
    # the same numbers from a dataset of (image, label) items, an iterable of batches and videos
    dataset = torch.utils.data.TensorDataset(reference, torch.zeros(400))
    again = compute_metrics(
        iter(same.split(50)), dataset, MeanPool(), kid_subsets=10, kid_subset_size=100, progress=False
    )
    assert again["fid"] == pytest.approx(good["fid"]) and again["kid"] == pytest.approx(good["kid"])
    video = same.reshape(100, 3, 1, 16, 16).transpose(1, 2)  # (100, 1, T=3, 16, 16)
    frames = compute_metrics(
        video, reference, MeanPool(), kid_subsets=10, kid_subset_size=100, progress=False
    )
    assert frames["num_samples"] == 300


def test_torchscript_extractor(tmp_path):
    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 2)  # (B, 3, 2, 2)

    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net()), str(path))
    extractor = TorchScriptExtractor(path, input_size=8, channels=3, value_range="0,1")
    images = torch.full((5, 1, 20, 20), -1.0)
    feats = extractor(images)
    # -1 maps to 0 in the [0, 1] range; gray is repeated to 3 channels
    assert feats.shape == (5, 12) and feats.abs().max() < 1e-6
    assert isinstance(extractor, FeatureExtractor) and extractor.name == "torchscript:net.pt"
    exported = tmp_path / "net.pt2"  # torch.export programs load through the same class
    program = torch.export.export(
        Net(), (torch.rand(4, 3, 8, 8),), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}}
    )
    torch.export.save(program, str(exported))
    torch.testing.assert_close(
        TorchScriptExtractor(exported, input_size=8, channels=3)(images), extractor(images) * 2 - 1
    )
    with pytest.raises(FileNotFoundError, match="torch.jit.save"):
        TorchScriptExtractor(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- shipped feature net
def test_shipped_weights_load_with_metadata():
    net = FashionFeatureNet.load_default()
    assert DEFAULT_WEIGHTS.stat().st_size < 2 * 1024 * 1024
    assert net.test_accuracy is not None and net.test_accuracy > 0.88
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    feats = net(torch.zeros(3, 3, 32, 32))  # RGB, 32x32: converted to gray 28x28
    assert feats.shape == (3, net.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")
def test_shipped_net_classifies_real_test_images():
    net = FashionFeatureNet.load_default()
    images, labels = FashionMNIST("test", limit=500).get_batch(slice(0, 500))
    with torch.no_grad():
        accuracy = (net.logits(images).argmax(1) == labels).float().mean().item()
        padded = FashionMNIST("test", limit=500, image_size=32).get_batch(slice(0, 500))[0]
        accuracy_32 = (net.logits(padded).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.85 and accuracy_32 > 0.75


def test_corrupt_weights_give_clear_errors(tmp_path):
    blob = bytearray(DEFAULT_WEIGHTS.read_bytes())
    blob[-100] ^= 0xFF  # flip bits inside the tensor data: a valid file, wrong numbers
    (tmp_path / "flipped.safetensors").write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="corrupt.*checksum"):
        FashionFeatureNet.load(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(bytes(blob[:500]))
    with pytest.raises(WeightsError, match="corrupt"):
        FashionFeatureNet.load(tmp_path / "cut.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        FashionFeatureNet.load(tmp_path / "missing.safetensors")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = FashionFeatureNet(width=8, feature_dim=16).eval()
    path = net.save(tmp_path / "w.safetensors", test_accuracy=0.5)
    loaded = FashionFeatureNet.load(path)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(loaded(x), net(x))
    assert loaded.test_accuracy == 0.5 and loaded.feature_dim == 16


@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")
def test_feature_net_fid_real_halves_close_noise_far():
    """Two halves of the test split score far closer to each other than blurred noise does."""
    net = FashionFeatureNet.load_default()
    data = FashionMNIST("test", image_size=32, limit=1200)
    first, second = data.get_batch(slice(0, 600))[0], torch.utils.data.Subset(data, range(600, 1200))
    gen = torch.Generator().manual_seed(0)
    noise = torch.nn.functional.avg_pool2d(torch.rand(600, 1, 32, 32, generator=gen) * 2 - 1, 3, 1, 1)
    kw = dict(kid_subsets=10, kid_subset_size=300, progress=False)
    close = compute_metrics(first, second, net, **kw)
    far = compute_metrics(noise, data, net, reference_limit=600, **kw)
    assert far["num_reference"] == 600 and close["extractor"] == net.name
    assert far["fid"] > 10 * close["fid"] and far["kid"] > 10 * abs(close["kid"])
