"""Samplers against the EXACT fields of a 2D Gaussian mixture.

For x1 ~ sum_k pi_k N(mu_k, S_k) the interpolant x_t = a x1 + s x0 is the mixture of N(a mu_k, C_k),
C_k = a^2 S_k + s^2 I, so E[x1 | x_t], E[x0 | x_t], the velocity and the score are closed forms. Every
sampler must map N(0, I) to samples with the mixture's mean, covariance and mode weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from zigscan.diffusion.samplers import (
    ODE_METHODS,
    SAMPLING_METHODS,
    SampleResult,
    guided_model_fn,
    sample,
    sample_ode,
    sample_sde,
)
from zigscan.diffusion.transport import PREDICTIONS, Transport

# ---------------------------------------------------------------------------------------------------
# The exact model
# ---------------------------------------------------------------------------------------------------


class GaussianMixture:
    """x1 ~ sum_k w_k N(mu_k, S_k) in float64, with the exact posterior fields of any Transport."""

    def __init__(self, weights, means, covs):
        self.w = torch.tensor(weights, dtype=torch.float64)  # (K,)
        self.mu = torch.tensor(means, dtype=torch.float64)  # (K, D)
        self.S = torch.tensor(covs, dtype=torch.float64)  # (K, D, D)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)  # (N,)
        L = torch.linalg.cholesky(self.S)  # (K, D, D)
        z = torch.randn(n, self.mu.shape[1], generator=generator, dtype=torch.float64)
        return self.mu[k] + torch.einsum("nij,nj->ni", L[k], z)

    def mean(self) -> torch.Tensor:
        return (self.w[:, None] * self.mu).sum(0)

    def cov(self) -> torch.Tensor:
        m = self.mean()
        second = (self.w[:, None, None] * (self.S + self.mu[:, :, None] * self.mu[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def posterior(self, transport: Transport, x: torch.Tensor, t: torch.Tensor):
        """E[x1 | x_t = x], E[x0 | x_t = x] and the score, each [N, D] in float64."""
        x, t = x.double(), t.double()
        a, s = transport.path.alpha(t)[:, None], transport.path.sigma(t)[:, None]  # (N, 1)
        # C_k = a^2 S_k + s^2 I, a 2x2 symmetric [[p, q], [q, r]] per (n, k), inverted in closed form
        p = a**2 * self.S[:, 0, 0] + s**2  # (N, K)
        q = a**2 * self.S[:, 0, 1]
        r = a**2 * self.S[:, 1, 1] + s**2
        det = p * r - q**2
        d0 = x[:, None, 0] - a * self.mu[:, 0]  # (N, K)
        d1 = x[:, None, 1] - a * self.mu[:, 1]
        c0 = (r * d0 - q * d1) / det  # C^-1 (x - a mu), (N, K)
        c1 = (p * d1 - q * d0) / det
        logp = torch.log(self.w) - 0.5 * torch.log(det) - 0.5 * (d0 * c0 + d1 * c1)  # (N, K)
        resp = torch.softmax(logp, dim=1)  # (N, K)
        Cinv_diff = torch.stack([c0, c1], dim=-1)  # (N, K, 2)
        x1 = self.mu + a[..., None] * torch.einsum("kij,nkj->nki", self.S, Cinv_diff)  # (N, K, 2)
        x1 = (resp[..., None] * x1).sum(1)
        x0 = (resp[..., None] * s[..., None] * Cinv_diff).sum(1)
        score = -(resp[..., None] * Cinv_diff).sum(1)
        return x1, x0, score

    def model(self, transport: Transport):
        """model_fn(x, t) returning the exact prediction of transport.prediction, in x's dtype."""

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x1, x0, score = self.posterior(transport, x, t)
            if transport.prediction.value == "velocity":
                tt = t.double()[:, None]
                out = transport.path.d_alpha(tt) * x1 + transport.path.d_sigma(tt) * x0
            elif transport.prediction.value == "noise":
                out = x0
            else:
                out = score
            return out.to(x.dtype)

        return fn


GMM = GaussianMixture(
    weights=[0.2, 0.3, 0.5],
    means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]],
    covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]], [[0.2, 0.0], [0.0, 0.2]]],
)
# A smoother mixture (overlapping components) for the error/convergence tests: the flow of GMM moves
# points near the basin boundaries a lot, so max errors there measure sensitivity, not the integrator.
SMOOTH = GaussianMixture(
    weights=[0.4, 0.6],
    means=[[-1.0, 0.0], [1.0, 0.5]],
    covs=[[[0.5, 0.0], [0.0, 0.5]], [[0.8, 0.2], [0.2, 0.5]]],
)
N = 4000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The fields are many tiny ops: one thread is several times faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _noise(n: int = N, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mode_fractions(x: torch.Tensor) -> torch.Tensor:
    k = torch.cdist(x.double(), GMM.mu).argmin(dim=1)
    return torch.bincount(k, minlength=len(GMM.w)).double() / x.shape[0]


# Sampling noise for N = 4000 draws of this mixture: mean SE ~ 0.025, covariance entry SE ~ 0.07; mode
# fractions SE ~ 0.008. Tolerances are ~4 SE plus a little room for discretisation error.
REFERENCE_FRACTIONS = _mode_fractions(GMM.sample(200_000, torch.Generator().manual_seed(1)))


def assert_matches_mixture(x: torch.Tensor, *, mean_tol=0.1, cov_tol=0.2, frac_tol=0.03) -> None:
    x = x.double()
    assert torch.isfinite(x).all()
    mean_err = (x.mean(0) - GMM.mean()).abs().max().item()
    cov_err = (torch.cov(x.T) - GMM.cov()).abs().max().item()
    frac_err = (_mode_fractions(x) - REFERENCE_FRACTIONS).abs().max().item()
    assert mean_err < mean_tol, f"mean off by {mean_err:.3f}: {x.mean(0).tolist()} vs {GMM.mean().tolist()}"
    assert cov_err < cov_tol, f"covariance off by {cov_err:.3f}: {torch.cov(x.T).tolist()} vs {GMM.cov().tolist()}"
    assert frac_err < frac_tol, f"mode weights off by {frac_err:.3f}: {_mode_fractions(x).tolist()}"


def test_mixture_helper_is_consistent():
    """The exact fields themselves: samples of the mixture pass the check; velocity/noise/score agree
    with Transport's conversions (so the closed form is not wrong in the same way as the code)."""
    assert_matches_mixture(GMM.sample(N, torch.Generator().manual_seed(3)))
    t = torch.rand(64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.9 + 0.05
    x = _noise(64, seed=5, dtype=torch.float64) * 2
    for path in ("linear", "gvp", "vp"):
        v = GMM.model(Transport(path, "velocity"))(x, t)
        eps = GMM.model(Transport(path, "noise"))(x, t)
        score = GMM.model(Transport(path, "score"))(x, t)
        tr = Transport(path, "velocity")
        torch.testing.assert_close(tr.noise_from_velocity(v, x, t), eps, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tr.score_from_noise(eps, x, t), score, rtol=1e-9, atol=1e-9)
    # the score is the gradient of log p_t: compare with autograd of the closed-form log density
    tr = Transport("gvp", "score")
    xg = x.clone().requires_grad_(True)
    a, s = tr.path.alpha(t), tr.path.sigma(t)
    C = a[:, None, None, None] ** 2 * GMM.S + s[:, None, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(a[:, None, None] * GMM.mu, covariance_matrix=C)
    logp = torch.logsumexp(comp.log_prob(xg[:, None, :]) + torch.log(GMM.w), dim=1).sum()
    (grad,) = torch.autograd.grad(logp, xg)
    torch.testing.assert_close(GMM.model(tr)(x, t), grad, rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------------------------------------
# ODE samplers
# ---------------------------------------------------------------------------------------------------

ODE_CASES = [("euler", 200), ("heun", 40), ("dopri5", None)]


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("method,steps", ODE_CASES)
def test_ode_samplers_reproduce_mixture(path, method, steps):
    transport = Transport(path, "velocity")
    options = {"atol": 1e-4, "rtol": 1e-4} if method == "dopri5" else {}
    out = sample(transport, GMM.model(transport), _noise(), method=method, steps=steps, **options)
    assert isinstance(out, SampleResult) and out.x.shape == (N, 2) and out.x.dtype == torch.float32
    if method != "dopri5":
        assert out.nfe == (steps if method == "euler" else 2 * steps)
    else:
        assert 10 < out.nfe < 150
    assert_matches_mixture(out.x)


@pytest.mark.parametrize("prediction", ["noise", "score"])
@pytest.mark.parametrize("path", ["linear", "gvp"])
def test_ode_with_noise_and_score_models(path, prediction):
    """Score and noise models are singular for the velocity at t = 0: the transport's interval starts at
    sample_eps and the result still matches."""
    transport = Transport(path, prediction)
    t0, t1 = transport.sample_interval()
    assert t0 > 0 and t1 < 1
    out = sample(transport, GMM.model(transport), _noise(), method="heun", steps=40)
    assert_matches_mixture(out.x)


def _ode_error(method: str, transport: Transport, x0: torch.Tensor, ref: torch.Tensor, **kw):
    out = sample_ode(transport.velocity_fn(SMOOTH.model(transport)), x0, method=method, **kw)
    return (out.x - ref).abs().max().item(), out.nfe


def test_dopri5_needs_far_fewer_evaluations_than_euler():
    transport = Transport("gvp", "velocity")
    x0 = _noise(256, seed=7, dtype=torch.float64)
    v = transport.velocity_fn(SMOOTH.model(transport))
    ref = sample_ode(v, x0, method="dopri5", atol=1e-10, rtol=1e-10).x
    err_dopri, nfe_dopri = _ode_error("dopri5", transport, x0, ref, atol=1e-5, rtol=1e-5)
    err_euler, nfe_euler = _ode_error("euler", transport, x0, ref, steps=1000)
    assert err_dopri < err_euler, (err_dopri, err_euler)  # dopri5 at least as accurate ...
    assert nfe_dopri * 4 < nfe_euler, (nfe_dopri, nfe_euler)  # ... for a quarter of the evaluations or less
    assert err_dopri < 1e-3


def test_convergence_orders():
    """Halving the step divides Euler's error by ~2 and Heun's by ~4."""
    transport = Transport("linear", "velocity")
    x0 = _noise(256, seed=8, dtype=torch.float64)
    ref = sample_ode(transport.velocity_fn(SMOOTH.model(transport)), x0, method="dopri5", atol=1e-11, rtol=1e-11).x
    for method, order in (("euler", 1), ("heun", 2)):
        e1, _ = _ode_error(method, transport, x0, ref, steps=100)
        e2, _ = _ode_error(method, transport, x0, ref, steps=200)
        assert 2**order * 0.75 < e1 / e2 < 2**order * 1.3, (method, e1, e2)


def test_dopri5_exact_solution_reverse_and_trajectory():
    """dx/dt = -2 x + t has x(t) = (x0 - 1/4 + ...) closed form; integrating back returns x0."""
    lam = -2.0
    exact = lambda x0, t: (x0 + 1 / lam**2) * math.exp(lam * t) - t / lam - 1 / lam**2

    def f(x, t):
        return lam * x + t.reshape(-1, *[1] * (x.ndim - 1))

    x0 = _noise(32, seed=9, dtype=torch.float64).reshape(32, 1, 2)
    out = sample_ode(f, x0, method="dopri5", atol=1e-8, rtol=1e-8, return_trajectory=True)
    torch.testing.assert_close(out.x, exact(x0, 1.0), rtol=1e-6, atol=1e-7)
    assert out.trajectory.shape[1:] == x0.shape and out.trajectory.shape[0] == out.times.shape[0]
    assert out.times[0] == 0 and out.times[-1] == 1 and (out.times.diff() > 0).all()
    torch.testing.assert_close(out.trajectory[0], x0)
    back = sample_ode(f, out.x, method="dopri5", atol=1e-8, rtol=1e-8, t0=1.0, t1=0.0)
    torch.testing.assert_close(back.x, x0, rtol=1e-6, atol=1e-6)


def test_ode_round_trip_through_the_mixture_flow():
    transport = Transport("linear", "velocity")
    v = transport.velocity_fn(GMM.model(transport))
    x0 = _noise(512, seed=10, dtype=torch.float64)
    x1 = sample_ode(v, x0, method="dopri5", atol=1e-8, rtol=1e-8).x
    back = sample_ode(v, x1, method="dopri5", atol=1e-8, rtol=1e-8, t0=1.0, t1=0.0).x
    assert (back - x0).abs().max() < 1e-4


@pytest.mark.parametrize("method", ODE_METHODS)
def test_ode_trajectory_progress_and_kwargs(method):
    calls = []

    def v(x, t, *, shift):
        calls.append(shift)
        return torch.full_like(x, shift)

    out = sample_ode(v, torch.zeros(3, 4), method=method, steps=5, model_kwargs={"shift": 2.0},
                     return_trajectory=True, progress=True)
    torch.testing.assert_close(out.x, torch.full((3, 4), 2.0))  # constant field: every method is exact
    assert out.nfe == len(calls) and set(calls) == {2.0}
    assert out.trajectory[-1].equal(out.x) and out.times[-1].item() == 1.0
    if method != "dopri5":
        assert out.trajectory.shape == (6, 3, 4)


def test_ode_validation():
    with pytest.raises(ValueError, match="expected one of 'euler', 'heun', 'dopri5'"):
        sample_ode(lambda x, t: x, torch.zeros(1, 1), method="rk4")
    with pytest.raises(ValueError, match="shape"):
        sample_ode(lambda x, t: x[:, :1], torch.zeros(2, 2), steps=2)
    with pytest.raises(RuntimeError, match="max_steps"):
        sample_ode(lambda x, t: 1e3 * torch.sin(1e3 * x * t[:, None]), torch.ones(1, 1), method="dopri5",
                   max_steps=5, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown sampling method"):
        sample(Transport(), lambda x, t: x, torch.zeros(1, 1), method="ddim")


# ---------------------------------------------------------------------------------------------------
# SDE sampler
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,prediction,form,last_step",
    [
        ("linear", "velocity", "sigma", "mean"),
        ("gvp", "velocity", "sigma", "mean"),
        ("linear", "noise", "sigma", "euler"),
        ("gvp", "score", "sigma", "tweedie"),
        ("vp", "velocity", "sbdm", "mean"),
        ("linear", "velocity", "sigma", None),
    ],
)
def test_euler_maruyama_reproduces_mixture(path, prediction, form, last_step):
    transport = Transport(path, prediction)
    g = torch.Generator().manual_seed(11)
    out = sample(transport, GMM.model(transport), _noise(), method="euler-maruyama", steps=120,
                 diffusion_form=form, last_step=last_step, generator=g)
    assert out.nfe == 120
    assert_matches_mixture(out.x)


def test_sde_is_reproducible_and_actually_stochastic():
    transport = Transport("linear", "velocity")
    model = GMM.model(transport)
    run = lambda seed: sample_sde(transport, model, _noise(512), steps=50, generator=torch.Generator().manual_seed(seed)).x
    assert run(1).equal(run(1))
    assert not torch.allclose(run(1), run(2))
    ode = sample(transport, model, _noise(512), method="euler", steps=50).x
    assert (run(1) - ode).abs().mean() > 0.05  # the noise changes individual samples ...
    no_noise = sample_sde(transport, model, _noise(512), steps=50, diffusion_norm=0.0, last_step=None).x
    torch.testing.assert_close(no_noise, ode, rtol=1e-5, atol=1e-5)  # ... and without it the SDE is the ODE


def test_sde_validation():
    transport = Transport("vp", "velocity")
    with pytest.raises(ValueError, match="last_step"):
        sample_sde(transport, lambda x, t: x, torch.zeros(1, 1), last_step="ddim")
    with pytest.raises(ValueError, match="diffusion_form"):
        sample_sde(transport, lambda x, t: x, torch.zeros(1, 1), diffusion_form="const")
    with pytest.raises(ValueError, match="steps"):
        sample_sde(transport, lambda x, t: x, torch.zeros(1, 1), steps=1)
    with pytest.raises(ValueError, match="no room"):
        sample_sde(transport, lambda x, t: x, torch.zeros(1, 1), last_step_size=1.0)


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_fields_are_finite_at_the_sampling_interval_ends(path, prediction):
    transport = Transport(path, prediction)
    model = GMM.model(transport)
    x = _noise(64, seed=12) * 3
    for sde, form in ((False, "sigma"), (True, "sigma"), (True, "sbdm")):
        t0, t1 = transport.sample_interval(sde=sde, diffusion_form=form)
        for t in (t0, t1):
            tv = torch.full((64,), t)
            if sde:
                assert torch.isfinite(transport.drift(model(x, tv), x, tv, diffusion_form=form)).all(), (t, form)
                assert math.isfinite(float(transport.diffusion(torch.tensor(t), diffusion_form=form)))
            else:
                assert torch.isfinite(transport.velocity_fn(model)(x, tv)).all(), t


# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------


class _LabelModel:
    """out = x * (1 + y) + t, records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, *, y, bias=0.0):
        self.batches.append(x.shape[0])
        return x * (1 + y.to(x.dtype)[:, None]) + t[:, None] + bias


def test_guidance_scale_one_is_the_conditional_call():
    model = _LabelModel()
    x, t = _noise(6, seed=13), torch.rand(6)
    y, null = torch.arange(6), torch.full((6,), 10)
    guided = guided_model_fn(model, {"y": y}, {"y": null}, scale=1.0)
    assert guided(x, t).equal(model(x, t, y=y))
    assert model.batches == [6, 6]  # one call each, no unconditional half at scale 1


@pytest.mark.parametrize("scale", [0.0, 1.5, 4.0])
def test_guidance_is_one_batched_call(scale):
    model = _LabelModel()
    x, t = _noise(5, seed=14), torch.rand(5)
    y, null = torch.arange(5), torch.full((5,), 10)
    out = guided_model_fn(model, {"y": y, "bias": 0.5}, {"y": null, "bias": 0.5}, scale)(x, t)
    assert model.batches == [10]
    cond, uncond = model(x, t, y=y, bias=0.5), model(x, t, y=null, bias=0.5)
    torch.testing.assert_close(out, uncond + scale * (cond - uncond))
    # through a sampler a guided call counts as one evaluation
    model.batches.clear()
    res = sample_ode(guided_model_fn(model, {"y": y}, {"y": null}, scale), x, steps=3)
    assert res.nfe == 3 and model.batches == [10, 10, 10]


def test_guidance_validation():
    model = _LabelModel()
    x, t = torch.zeros(2, 2), torch.zeros(2)
    with pytest.raises(ValueError, match="same keys"):
        guided_model_fn(model, {"y": torch.zeros(2)}, {}, 2.0)
    with pytest.raises(ValueError, match="B=2 rows"):
        guided_model_fn(model, {"y": torch.zeros(3)}, {"y": torch.zeros(3)}, 2.0)(x, t)
    with pytest.raises(ValueError, match="same value"):
        guided_model_fn(model, {"y": torch.zeros(2), "bias": 1.0}, {"y": torch.zeros(2), "bias": 2.0}, 2.0)(x, t)


def test_sampling_methods_are_listed():
    assert set(ODE_METHODS) | {"euler-maruyama"} == set(SAMPLING_METHODS)
