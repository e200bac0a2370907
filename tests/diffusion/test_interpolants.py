"""Paths (alpha, sigma and derivatives), Transport's conversions, losses and time sampling."""

from __future__ import annotations

import math

import pytest
import torch

from zigscan.diffusion.interpolants import PATHS, GVPPath, LinearPath, Path, VPPath, get_path, register_path
from zigscan.diffusion.transport import (
    LOSS_WEIGHTS,
    PREDICTIONS,
    TIME_SAMPLINGS,
    Prediction,
    Transport,
)
from zigscan.scanpaths.registries import UnknownNameError

ALL_PATHS = list(PATHS)
PAIRS = [(a, b) for a in PREDICTIONS for b in PREDICTIONS if a != b]


def _times(n: int = 257, lo: float = 0.02, hi: float = 0.98) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def _randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def test_registry_lists_the_builtin_paths():
    assert {"linear", "gvp", "vp"} <= set(PATHS)
    assert isinstance(get_path("linear"), LinearPath) and isinstance(get_path("gvp"), GVPPath)
    assert isinstance(get_path("vp"), VPPath)
    with pytest.raises(UnknownNameError, match="Did you mean: linear"):
        get_path("linaer")


@pytest.mark.parametrize("name", ALL_PATHS)
def test_derivatives_match_finite_differences(name):
    path = get_path(name)
    t, h = _times(), 1e-6
    fd_alpha = (path.alpha(t + h) - path.alpha(t - h)) / (2 * h)
    fd_sigma = (path.sigma(t + h) - path.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(path.d_alpha(t), fd_alpha, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(path.d_sigma(t), fd_sigma, rtol=1e-6, atol=1e-7)
    for f in path.coefficients(t):
        assert f.shape == t.shape and f.dtype == t.dtype


@pytest.mark.parametrize("name", ALL_PATHS)
def test_endpoints_and_monotonicity(name):
    path = get_path(name)
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    assert path.alpha(one).item() == pytest.approx(1.0) and path.sigma(one).item() == pytest.approx(0.0, abs=1e-12)
    assert path.sigma(zero).item() == pytest.approx(1.0, abs=1e-4)
    assert path.alpha(zero).item() < 1e-2  # noise at t = 0 (exactly for linear/gvp, 6.6e-3 for vp)
    t = _times(lo=0.0, hi=0.99)
    assert (path.alpha(t).diff() > 0).all() and (path.sigma(t).diff() < 0).all()


def test_variance_preserving_paths_and_vp_formula():
    t = _times(lo=0.0, hi=1.0)
    for name in ("gvp", "vp"):
        path = get_path(name)
        torch.testing.assert_close(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t))
    # vp: log alpha_t = -1/2 int_0^{1-t} beta(u) du with beta(u) = 0.1 + u (20 - 0.1), by quadrature
    vp = VPPath()
    for tt in (0.0, 0.3, 0.9):
        u = torch.linspace(0, 1 - tt, 10_001, dtype=torch.float64)
        integral = torch.trapezoid(0.1 + u * 19.9, u)
        assert vp.alpha(torch.tensor(tt, dtype=torch.float64)).item() == pytest.approx(math.exp(-0.5 * integral), rel=1e-7)
    assert vp.alpha(torch.tensor(0.0)).item() == pytest.approx(math.exp(-5.025), rel=1e-5)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPPath(beta_min=1.0, beta_max=0.5)


def test_register_a_new_path():
    class CosinePath(Path):  # overrides the four coefficient methods only
        name = "test-cosine-sq"

        def alpha(self, t):
            return torch.sin(0.5 * math.pi * t) ** 2

        def sigma(self, t):
            return torch.cos(0.5 * math.pi * t) ** 2

        def d_alpha(self, t):
            return 0.5 * math.pi * torch.sin(math.pi * t)

        def d_sigma(self, t):
            return -0.5 * math.pi * torch.sin(math.pi * t)

    register_path("test-cosine-sq", CosinePath)
    try:
        transport = Transport("test-cosine-sq", "noise")
        assert transport.config()["path"] == "test-cosine-sq"
        x0, x1, t = _randn(8, 3, seed=1), _randn(8, 3, seed=2), _times(8, 0.1, 0.9)
        x_t, eps = transport.interpolate(x0, x1, t)
        v_target = Transport("test-cosine-sq", "velocity").interpolate(x0, x1, t)[1]
        torch.testing.assert_close(transport.velocity_from_noise(eps, x_t, t), v_target)
        with pytest.raises(TypeError, match="subclass"):
            register_path("bad", object)  # type: ignore[arg-type]
    finally:
        PATHS.unregister("test-cosine-sq")


# ---------------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_PATHS)
@pytest.mark.parametrize("source,target", PAIRS)
def test_conversions_round_trip(name, source, target):
    transport = Transport(name)
    x, pred, t = _randn(64, 3, 5, seed=3), _randn(64, 3, 5, seed=4), _times(64, 0.05, 0.95)
    there = transport.convert(pred, x, t, source=source, target=target)
    back = transport.convert(there, x, t, source=target, target=source)
    torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9)
    # going through the third kind gives the same answer as the direct conversion
    (mid,) = set(PREDICTIONS) - {source, target}
    via = transport.convert(transport.convert(pred, x, t, source=source, target=mid), x, t, source=mid, target=target)
    torch.testing.assert_close(via, there, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ALL_PATHS)
def test_conversions_map_the_conditional_targets_exactly(name):
    """For one pair (x0, x1): v = a' x1 + s' x0, eps = x0, score = -x0 / s are the same point seen three
    ways, so the conversions must map one target onto the other exactly; E[x1 | x] from v returns x1."""
    x0, x1, t = _randn(32, 4, seed=5), _randn(32, 4, seed=6), _times(32, 0.05, 0.95)
    targets = {}
    for kind in PREDICTIONS:
        x_t, targets[kind] = Transport(name, kind).interpolate(x0, x1, t)
    tr = Transport(name)
    torch.testing.assert_close(x_t, tr.path.alpha(t)[:, None] * x1 + tr.path.sigma(t)[:, None] * x0)
    torch.testing.assert_close(targets["noise"], x0)
    for source, target in PAIRS:
        got = tr.convert(targets[source], x_t, t, source=source, target=target)
        torch.testing.assert_close(got, targets[target], rtol=1e-9, atol=1e-9, msg=f"{source} -> {target}")
    torch.testing.assert_close(tr.data_from_velocity(targets["velocity"], x_t, t), x1, rtol=1e-9, atol=1e-9)
    for kind in PREDICTIONS:
        torch.testing.assert_close(Transport(name, kind).to_data(targets[kind], x_t, t), x1, rtol=1e-8, atol=1e-8)


def test_noise_from_velocity_is_finite_at_both_ends_of_linear_and_gvp():
    for name in ("linear", "gvp"):
        tr = Transport(name)
        x, v, t = _randn(4, 2, seed=7), _randn(4, 2, seed=8), torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
        assert torch.isfinite(tr.noise_from_velocity(v, x, t)).all()
        assert torch.isfinite(tr.data_from_velocity(v, x, t)).all()
        # at t = 0 the noise is x itself whatever the velocity; at t = 1 the data estimate is x
        torch.testing.assert_close(tr.noise_from_velocity(v, x, t)[:2], x[:2])
        torch.testing.assert_close(tr.data_from_velocity(v, x, t)[2:], x[2:])


# ---------------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------------


def _dirac_model(transport: Transport, c: torch.Tensor):
    """The exact model when the data is the single point c: E[x1 | x_t] = c, eps = (x - a c) / s."""

    def fn(x, t):
        tt = t[:, None, None]
        a, s, da, ds = transport.path.coefficients(tt)
        eps = (x - a * c) / s
        return {"velocity": da * c + ds * eps, "noise": eps, "score": -eps / s}[transport.prediction.value]

    return fn


COMBOS = [(p, k, w) for p in ("linear", "gvp", "vp") for k in PREDICTIONS for w in LOSS_WEIGHTS
          if not (k == "velocity" and w == "likelihood")]


@pytest.mark.parametrize("name,prediction,weight", COMBOS)
def test_training_loss_zero_for_exact_model_positive_otherwise(name, prediction, weight):
    transport = Transport(name, prediction, loss_weight=weight)
    c = _randn(1, 3, 4, seed=9)
    x1 = c.expand(256, 3, 4)
    g = torch.Generator().manual_seed(10)
    out = transport.training_loss(_dirac_model(transport, c), x1, generator=g)
    assert out["loss"].shape == (256,) and out["t"].shape == (256,)
    assert out["loss"].max() < 1e-8, out["loss"].max()
    wrong = transport.training_loss(lambda x, t: _dirac_model(transport, c)(x, t) + 0.1, x1, generator=g)
    assert (wrong["loss"] > 0).all() and wrong["loss"].mean() > 1e-4
    zeros = transport.training_loss(lambda x, t: torch.zeros_like(x), x1, generator=g)
    assert (zeros["loss"] > 0).all() and torch.isfinite(zeros["loss"]).all()


@pytest.mark.parametrize("prediction", ["noise", "score"])
def test_loss_weights_measure_velocity_and_likelihood_errors(prediction):
    """'velocity' weighting of a noise/score error == the MSE of the converted velocity;
    'likelihood' == g^2(t) * score MSE with g^2 = the "sbdm" diffusion (SiT's definitions)."""
    x1, x0 = _randn(64, 6, seed=11), _randn(64, 6, seed=12)
    t = _times(64, 0.05, 0.95)
    model = lambda x, t: _randn(*x.shape, seed=13)
    for name in ("linear", "gvp", "vp"):
        tr_v = Transport(name, prediction, loss_weight="velocity")
        x_t, _ = tr_v.interpolate(x0, x1, t)
        v_target = Transport(name, "velocity").interpolate(x0, x1, t)[1]
        v_pred = tr_v.to_velocity(model(x_t, t), x_t, t)
        got = tr_v.training_loss(model, x1, t=t, noise=x0)["loss"]
        torch.testing.assert_close(got, ((v_pred - v_target) ** 2).mean(1).float(), rtol=1e-5, atol=1e-6)

        tr_l = Transport(name, prediction, loss_weight="likelihood")
        score_err = tr_l.to_score(model(x_t, t), x_t, t) + x0 / tr_l.path.sigma(t)[:, None]
        g2 = tr_l.diffusion(t, diffusion_form="sbdm")
        got = tr_l.training_loss(model, x1, t=t, noise=x0)["loss"]
        torch.testing.assert_close(got, (g2 * (score_err**2).mean(1)).float(), rtol=1e-5, atol=1e-6)


def test_training_loss_plumbing():
    transport = Transport("linear", "velocity")
    x1 = torch.randn(5, 2, 3)
    seen = {}

    def model(x, t, *, y):
        seen["y"], seen["x"], seen["t"] = y, x, t
        return torch.zeros_like(x)

    a = transport.training_loss(model, x1, generator=torch.Generator().manual_seed(0), y=torch.arange(5))
    assert seen["y"].equal(torch.arange(5)) and seen["t"].equal(a["t"])
    b = transport.training_loss(model, x1, generator=torch.Generator().manual_seed(0), y=torch.arange(5))
    assert a["loss"].equal(b["loss"]) and a["t"].equal(b["t"])  # same generator, same draw
    # explicit t and noise: x_t is exactly t x1 + (1 - t) x0
    t, x0 = torch.full((5,), 0.25), torch.randn(5, 2, 3)
    transport.training_loss(model, x1, t=t, noise=x0, y=torch.arange(5))
    torch.testing.assert_close(seen["x"], 0.25 * x1 + 0.75 * x0)
    with pytest.raises(ValueError, match="expected the input's shape"):
        transport.training_loss(lambda x, t: x[:, :1], x1)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        transport.training_loss(model, x1, t=torch.zeros(4), y=None)


def test_training_loss_is_differentiable_and_float32_under_bf16_outputs():
    transport = Transport("gvp", "noise")
    w = torch.tensor(0.5, requires_grad=True)
    out = transport.training_loss(lambda x, t: (w * x).to(torch.bfloat16), torch.randn(4, 8))
    assert out["loss"].dtype == torch.float32
    out["loss"].mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad)


# ---------------------------------------------------------------------------------------------------
# Options, defaults, time sampling
# ---------------------------------------------------------------------------------------------------


def test_options_are_validated_with_the_allowed_values():
    with pytest.raises(ValueError, match="expected one of 'velocity', 'score', 'noise'"):
        Transport(prediction="eps")
    with pytest.raises(ValueError, match="'uniform', 'logit-normal'"):
        Transport(time_sampling="lognormal")
    with pytest.raises(ValueError, match="loss_weight"):
        Transport(loss_weight="snr")
    with pytest.raises(ValueError, match="likelihood"):
        Transport(prediction="velocity", loss_weight="likelihood")
    with pytest.raises(ValueError, match="train_eps"):
        Transport(train_eps=0.7)
    with pytest.raises(UnknownNameError):
        Transport(path="cosine")
    assert Transport(prediction=Prediction.SCORE).prediction is Prediction.SCORE  # enums pass too
    assert "logit-normal" in TIME_SAMPLINGS and None in LOSS_WEIGHTS


def test_default_intervals_follow_sit():
    assert Transport("linear", "velocity").train_interval() == (0.0, 1.0)
    assert Transport("gvp", "velocity").sample_interval() == (0.0, 1.0)
    assert Transport("linear", "noise").sample_interval() == (1e-3, 1 - 1e-3)
    assert Transport("vp", "velocity").train_interval() == (1e-5, 1 - 1e-5)
    assert Transport("vp", "velocity").sample_interval() == (1e-3, 1 - 1e-3)
    # the sbdm diffusion diverges at alpha = 0: an SDE with it starts off t = 0
    assert Transport("linear").sample_interval(sde=True, diffusion_form="sbdm")[0] > 0
    assert Transport("linear").sample_interval(sde=True, diffusion_form="sigma")[0] == 0
    cfg = Transport("gvp", "score", "likelihood", "logit-normal", logit_mean=0.3).config()
    assert Transport(**cfg).config() == cfg


def test_uniform_time_sampling():
    transport = Transport("vp", time_sampling="uniform")
    t = transport.sample_time(100_000, generator=torch.Generator().manual_seed(0))
    t0, t1 = transport.train_interval()
    assert t.shape == (100_000,) and t.min() >= t0 and t.max() <= t1
    assert t.mean().item() == pytest.approx(0.5, abs=0.005)
    assert t.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.005)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.6), (-1.0, 1.5)])
def test_logit_normal_time_sampling_median_and_spread(mean, std):
    transport = Transport("linear", "noise", time_sampling="logit-normal", logit_mean=mean, logit_std=std)
    t0, t1 = transport.train_interval()
    t = transport.sample_time(200_000, generator=torch.Generator().manual_seed(1)).double()
    assert t.min() >= t0 and t.max() <= t1
    assert t.median().item() == pytest.approx(t0 + (t1 - t0) / (1 + math.exp(-mean)), abs=0.005)
    u = (t - t0) / (t1 - t0)
    logit = torch.log(u) - torch.log1p(-u)  # should be N(mean, std^2)
    assert logit.mean().item() == pytest.approx(mean, abs=0.01)
    assert logit.std().item() == pytest.approx(std, rel=0.01)
    q25, q75 = torch.quantile(logit[:100_000], torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    assert q75 - q25 == pytest.approx(2 * 0.6744897 * std, rel=0.03)  # normal IQR


def test_sample_time_generator_and_device():
    transport = Transport()
    a = transport.sample_time(8, generator=torch.Generator().manual_seed(3))
    b = transport.sample_time(8, generator=torch.Generator().manual_seed(3), device="cpu")
    assert a.equal(b) and a.dtype == torch.float32 and a.device.type == "cpu"


def test_conversions_keep_the_wider_dtype():
    """A bf16 model output converted against a float32 state comes back float32 (no bf16 rounding of the
    converted value), and velocity_fn returns the state's dtype."""
    tr = Transport("linear", "noise")
    x, t = torch.randn(4, 3), torch.full((4,), 0.5)
    eps = torch.randn(4, 3).to(torch.bfloat16)
    v = tr.to_velocity(eps, x, t)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, tr.to_velocity(eps.float(), x, t))
    assert tr.velocity_fn(lambda x, t: eps)(x, t).dtype == torch.float32
