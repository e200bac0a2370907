"""Transport: the training objective and the algebra between what a model predicts and what a sampler needs.

Read with ``interpolants.py`` (the path: alpha_t, sigma_t) and ``samplers.py`` (the integrators). With
x_t = a x1 + s x0 (a = alpha_t, s = sigma_t, a' and s' their time derivatives, x0 ~ N(0, I) noise,
x1 data, t = 0 noise, t = 1 data) the three quantities a model can predict are

    velocity  v(x, t) = E[a' x1 + s' x0 | x_t = x]        (drives the ODE dx/dt = v from t = 0 to 1)
    noise   eps(x, t) = E[x0 | x_t = x]
    score     s(x, t) = grad log p_t(x) = -eps / s

and, with the Wronskian W = a s' - a' s (W < 0 for every built-in path; -1 for linear, -pi/2 for gvp),
they convert exactly into one another:

    eps = (a v - a' x) / W        finite everywhere W is (no division by a or s)
    v   = (a' x + W eps) / a      singular at a = 0 (t = 0 of linear/gvp): noise and score models
                                  carry no information about v there, so their samplers start at eps
    s   = -eps / s                singular at s = 0 (t = 1)
    x1  = (s' x - s v) / W        E[x1 | x_t], used by the "tweedie" last SDE step

Time intervals (SiT's rules): training draws t from [train_eps, 1 - train_eps], sampling runs over
[sample_eps, 1 - sample_eps]. Defaults: 0 for a velocity model on linear/gvp (stable everywhere),
vp: train 1e-5 / sample 1e-3 (d_sigma diverges at t = 1), score/noise models: 1e-3.

Loss (per sample, mean over all non-batch dims):
* velocity prediction: ||v_pred - v_target||^2 (``loss_weight`` None or "velocity": the same thing).
* noise / score prediction: w(t) ||eps_pred - x0||^2, where a score prediction enters as
  eps_pred = -s * score_pred (SiT's form, finite as s -> 0), and w(t) is
  None: 1; "velocity": (W / a)^2 (the error measured in velocity units);
  "likelihood": -W / (a s) = g^2(t) / s^2, the score-matching likelihood weighting.

SDE (``drift``/``diffusion``): dx = [v + w(t) score] dt + sqrt(2 w(t)) dW has the marginals p_t of the ODE
for any w >= 0 (SiT's convention). ``diffusion_form``: "sigma" (w = norm * s, SiT's default, finite on
all of [0, 1]) or "sbdm" (w = norm * (a'/a s^2 - s s'), the reverse VP-SDE for vp; diverges at a = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Literal

import torch

from .interpolants import GVPPath, LinearPath, Path, VPPath, get_path

__all__ = [
    "Prediction",
    "LossWeight",
    "TimeSampling",
    "DiffusionForm",
    "PREDICTIONS",
    "LOSS_WEIGHTS",
    "TIME_SAMPLINGS",
    "DIFFUSION_FORMS",
    "Transport",
    "ModelFn",
    "expand_like",
    "mean_flat",
]

ModelFn = Callable[..., torch.Tensor]  # model_fn(x_t [B, ...], t [B], **model_kwargs) -> [B, ...]

# ---------------------------------------------------------------------------------------------------
# Closed choices: strings at the edge (configs, CLI), enums inside
# ---------------------------------------------------------------------------------------------------


class Prediction(str, Enum):
    VELOCITY = "velocity"
    SCORE = "score"
    NOISE = "noise"


class LossWeight(str, Enum):
    NONE = "none"  # also spelled None
    VELOCITY = "velocity"
    LIKELIHOOD = "likelihood"


class TimeSampling(str, Enum):
    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit-normal"


class DiffusionForm(str, Enum):
    SIGMA = "sigma"
    SBDM = "sbdm"


PREDICTIONS: tuple[str, ...] = tuple(p.value for p in Prediction)
LOSS_WEIGHTS: tuple[str | None, ...] = (None,) + tuple(w.value for w in LossWeight if w is not LossWeight.NONE)
TIME_SAMPLINGS: tuple[str, ...] = tuple(s.value for s in TimeSampling)
DIFFUSION_FORMS: tuple[str, ...] = tuple(f.value for f in DiffusionForm)

# The first SDE time when the "sbdm" diffusion would diverge at t = 0 (alpha_0 = 0) and sample_eps is 0.
SBDM_T0 = 1e-3


def _parse(enum_cls: type[Enum], value: Any, what: str) -> Any:
    """String (or enum member) -> enum member; an unknown value lists the allowed ones."""
    if value is None and enum_cls is LossWeight:
        return LossWeight.NONE
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)  # type: ignore[attr-defined]
        raise ValueError(f"unknown {what} {value!r}: expected one of {allowed}") from None


# ---------------------------------------------------------------------------------------------------
# Small tensor helpers
# ---------------------------------------------------------------------------------------------------


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Time [B] (or a scalar) -> [B, 1, ..., 1] broadcastable against x [B, ...]."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"time must be a scalar or have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim except the batch: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype coefficients are computed in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _out_dtype(pred: torch.Tensor, x: torch.Tensor) -> torch.dtype:
    """Conversions return the wider of the prediction's and the state's dtypes (a bf16 model output
    converted against a float32 state stays float32)."""
    return torch.promote_types(pred.dtype, x.dtype)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal shaped like x, drawn on the generator's device and moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------------------


class Transport:
    """A path, a prediction kind, a loss weighting and a time distribution.

    Args:
        path: a name in ``interpolants.PATHS`` ("linear", "gvp", "vp") or a ``Path``.
        prediction: what the model outputs: "velocity", "score" or "noise".
        loss_weight: None, "velocity" or "likelihood" (see the module docstring; "likelihood" needs a
            score or noise model).
        time_sampling: "uniform" on the training interval, or "logit-normal": t = t0 + (t1 - t0) *
            sigmoid(n), n ~ N(logit_mean, logit_std^2) (SD3), whose median is sigmoid(logit_mean).
        train_eps, sample_eps: distances kept from t = 0 and t = 1; None picks SiT's defaults.
        logit_mean, logit_std: parameters of the logit-normal time distribution.
    """

    def __init__(
        self,
        path: str | Path = "linear",
        prediction: Literal["velocity", "score", "noise"] | Prediction = "velocity",
        loss_weight: Literal["velocity", "likelihood"] | LossWeight | None = None,
        time_sampling: Literal["uniform", "logit-normal"] | TimeSampling = "uniform",
        train_eps: float | None = None,
        sample_eps: float | None = None,
        *,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        self.path = get_path(path)
        self.prediction: Prediction = _parse(Prediction, prediction, "prediction")
        self.loss_weight: LossWeight = _parse(LossWeight, loss_weight, "loss_weight")
        self.time_sampling: TimeSampling = _parse(TimeSampling, time_sampling, "time_sampling")
        if self.prediction is Prediction.VELOCITY and self.loss_weight is LossWeight.LIKELIHOOD:
            raise ValueError(
                "loss_weight='likelihood' weights a score or noise error; with prediction='velocity' use "
                "loss_weight=None (the plain velocity MSE), or set prediction='noise' or 'score'"
            )
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

        stable = isinstance(self.path, (LinearPath, GVPPath)) and self.prediction is Prediction.VELOCITY
        default_train = 0.0 if stable else (1e-5 if isinstance(self.path, VPPath) else 1e-3)
        default_sample = 0.0 if stable else 1e-3
        self.train_eps = float(default_train if train_eps is None else train_eps)
        self.sample_eps = float(default_sample if sample_eps is None else sample_eps)
        for name, eps in (("train_eps", self.train_eps), ("sample_eps", self.sample_eps)):
            if not 0 <= eps < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {eps}")

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        """Plain-string settings (for checkpoints and logs); ``Transport(**t.config())`` rebuilds it
        when the path is a registered one."""
        return {
            "path": self.path.name,
            "prediction": self.prediction.value,
            "loss_weight": None if self.loss_weight is LossWeight.NONE else self.loss_weight.value,
            "time_sampling": self.time_sampling.value,
            "train_eps": self.train_eps,
            "sample_eps": self.sample_eps,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Transport({args})"

    # ------------------------------------------------------------------ intervals and time
    def train_interval(self) -> tuple[float, float]:
        """(t0, t1) that training times are drawn from."""
        return self.train_eps, 1.0 - self.train_eps

    def sample_interval(
        self, *, sde: bool = False, diffusion_form: Literal["sigma", "sbdm"] | DiffusionForm = "sigma"
    ) -> tuple[float, float]:
        """(t0, t1) a sampler integrates over. An SDE with the "sbdm" diffusion starts at ``SBDM_T0`` if
        sample_eps is 0 and alpha_0 = 0 (its diffusion diverges there)."""
        t0, t1 = self.sample_eps, 1.0 - self.sample_eps
        form = _parse(DiffusionForm, diffusion_form, "diffusion_form")
        if sde and form is DiffusionForm.SBDM and t0 == 0 and float(self.path.alpha(torch.zeros(()))) == 0:
            t0 = SBDM_T0
        return t0, t1

    def sample_time(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training times [batch] (float32) on ``device`` (default: the generator's device, else CPU)."""
        t0, t1 = self.train_interval()
        gen_device = generator.device if generator is not None else device
        if self.time_sampling is TimeSampling.UNIFORM:
            u = torch.rand(batch, generator=generator, device=gen_device)
        else:
            n = torch.randn(batch, generator=generator, device=gen_device)
            u = torch.sigmoid(self.logit_mean + self.logit_std * n)
        t = t0 + (t1 - t0) * u  # (B,)
        return t if device is None else t.to(device)

    # ------------------------------------------------------------------ coefficients
    def _coefficients(self, t: torch.Tensor, x: torch.Tensor):
        """(a, s, a', s', W) at t, each [B, 1, ..., 1] (or scalar) in x's float dtype (>= float32)."""
        t = expand_like(t, x).to(_float_dtype(x))
        a, s, da, ds = self.path.coefficients(t)
        return a, s, da, ds, a * ds - da * s

    # ------------------------------------------------------------------ training
    def interpolate(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and the regression target of the configured prediction kind.

        x0 [B, ...] noise, x1 [B, ...] data, t [B] -> (x_t [B, ...], target [B, ...]); targets:
        velocity a' x1 + s' x0, noise x0, score -x0 / s.
        """
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        a, s, da, ds, _ = self._coefficients(t, x1)
        x_t = (a * x1 + s * x0).to(x1.dtype)
        if self.prediction is Prediction.VELOCITY:
            target = da * x1 + ds * x0
        elif self.prediction is Prediction.NOISE:
            target = x0
        else:
            target = -x0 / s
        return x_t, target.to(x1.dtype)

    def loss_weight_t(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) [B] multiplying the per-sample MSE (1 for the plain losses)."""
        t = torch.as_tensor(t)
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        a, s, da, ds = self.path.coefficients(t.to(dtype))
        W = a * ds - da * s
        if self.loss_weight is LossWeight.NONE or self.prediction is Prediction.VELOCITY:
            return torch.ones_like(a)
        if self.loss_weight is LossWeight.VELOCITY:
            return (W / a) ** 2
        return -W / (a * s)  # likelihood

    def training_loss(
        self,
        model_fn: ModelFn,
        x1: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss of ``model_fn`` on data x1 [B, ...].

        Draws t [B] (``sample_time``) and x0 ~ N(0, I) from ``generator`` unless given, calls
        ``model_fn(x_t, t, **model_kwargs)`` once, and returns ``{"loss": [B] float32, "t": [B]}``.
        """
        B = x1.shape[0]
        if t is None:
            t = self.sample_time(B, generator=generator, device=x1.device)
        t = torch.as_tensor(t, device=x1.device)
        if t.shape != (B,):
            raise ValueError(f"t must have shape [B] = [{B}], got {tuple(t.shape)}")
        x0 = _randn_like(x1, generator) if noise is None else noise
        x_t, target = self.interpolate(x0, x1, t)  # (B, ...), (B, ...)
        pred = model_fn(x_t, t, **model_kwargs)  # (B, ...)
        if pred.shape != x1.shape:
            raise ValueError(
                f"model_fn returned shape {tuple(pred.shape)}, expected the input's shape {tuple(x1.shape)} "
                f"(a {self.prediction.value} prediction)"
            )
        pred, target = pred.float(), target.float()
        if self.prediction is Prediction.VELOCITY:
            loss = mean_flat((pred - target) ** 2)
        else:
            _, s, _, _, _ = self._coefficients(t, pred)
            eps_pred = pred if self.prediction is Prediction.NOISE else -s * pred  # (B, ...)
            loss = self.loss_weight_t(t).float() * mean_flat((eps_pred - x0.float()) ** 2)
        return {"loss": loss, "t": t}

    # ------------------------------------------------------------------ conversions (pred, x_t, t)
    def noise_from_velocity(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, _, da, _, W = self._coefficients(t, x_t)
        return ((a * v - da * x_t) / W).to(_out_dtype(v, x_t))

    def velocity_from_noise(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, _, da, _, W = self._coefficients(t, x_t)
        return ((da * x_t + W * eps) / a).to(_out_dtype(eps, x_t))

    def score_from_noise(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, s, _, _, _ = self._coefficients(t, x_t)
        return (-eps / s).to(_out_dtype(eps, x_t))

    def noise_from_score(self, score: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, s, _, _, _ = self._coefficients(t, x_t)
        return (-s * score).to(_out_dtype(score, x_t))

    def velocity_from_score(self, score: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s, da, _, W = self._coefficients(t, x_t)
        return ((da * x_t - W * s * score) / a).to(_out_dtype(score, x_t))

    def score_from_velocity(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s, da, _, W = self._coefficients(t, x_t)
        return (-(a * v - da * x_t) / (W * s)).to(_out_dtype(v, x_t))

    def data_from_velocity(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x1 | x_t] from the velocity: (s' x - s v) / W."""
        _, s, _, ds, W = self._coefficients(t, x_t)
        return ((ds * x_t - s * v) / W).to(_out_dtype(v, x_t))

    def convert(
        self,
        pred: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        source: Literal["velocity", "score", "noise"] | Prediction,
        target: Literal["velocity", "score", "noise"] | Prediction,
    ) -> torch.Tensor:
        """Any of velocity / score / noise -> any other, at (x_t [B, ...], t [B])."""
        src = _parse(Prediction, source, "source prediction")
        dst = _parse(Prediction, target, "target prediction")
        if src is dst:
            return pred
        return _CONVERSIONS[(src, dst)](self, pred, x_t, t)

    def to_velocity(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The configured prediction kind -> velocity."""
        return self.convert(pred, x_t, t, source=self.prediction, target=Prediction.VELOCITY)

    def to_noise(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.convert(pred, x_t, t, source=self.prediction, target=Prediction.NOISE)

    def to_score(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.convert(pred, x_t, t, source=self.prediction, target=Prediction.SCORE)

    def to_data(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The configured prediction kind -> E[x1 | x_t] (through the velocity, finite wherever W is)."""
        if self.prediction is Prediction.VELOCITY:
            return self.data_from_velocity(pred, x_t, t)
        a, s, _, _, _ = self._coefficients(t, x_t)  # x1 = (x - s eps) / a; finite for t > 0
        return ((x_t - s * self.to_noise(pred, x_t, t)) / a).to(_out_dtype(pred, x_t))

    def velocity_fn(self, model_fn: ModelFn) -> ModelFn:
        """``model_fn`` (any prediction kind) -> the ODE's velocity field ``v(x, t, **model_kwargs)``."""

        def velocity(x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
            return self.to_velocity(model_fn(x, t, **model_kwargs), x, t).to(x.dtype)

        return velocity

    # ------------------------------------------------------------------ SDE
    def diffusion(
        self,
        t: torch.Tensor,
        *,
        diffusion_form: Literal["sigma", "sbdm"] | DiffusionForm = "sigma",
        diffusion_norm: float = 1.0,
    ) -> torch.Tensor:
        """w(t), shaped like t: the SDE is dx = [v + w score] dt + sqrt(2 w) dW."""
        form = _parse(DiffusionForm, diffusion_form, "diffusion_form")
        t = torch.as_tensor(t)
        a, s, da, ds = self.path.coefficients(t.to(torch.float64 if t.dtype == torch.float64 else torch.float32))
        if form is DiffusionForm.SIGMA:
            return diffusion_norm * s
        return diffusion_norm * (-(a * ds - da * s) * s / a)  # = a'/a s^2 - s s'

    def drift(
        self,
        pred: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        diffusion_form: Literal["sigma", "sbdm"] | DiffusionForm = "sigma",
        diffusion_norm: float = 1.0,
    ) -> torch.Tensor:
        """SDE drift v + w(t) score from one prediction of the configured kind [B, ...].

        Written as v - (w / s) eps so that it stays finite at s = 0: w / s is norm ("sigma") or
        -norm W / a ("sbdm").
        """
        form = _parse(DiffusionForm, diffusion_form, "diffusion_form")
        v = self.to_velocity(pred, x_t, t)
        eps = self.to_noise(pred, x_t, t)
        a, _, _, _, W = self._coefficients(t, x_t)
        w_over_s = diffusion_norm if form is DiffusionForm.SIGMA else -diffusion_norm * W / a
        return (v - w_over_s * eps).to(x_t.dtype)

    def drift_fn(
        self,
        model_fn: ModelFn,
        *,
        diffusion_form: Literal["sigma", "sbdm"] | DiffusionForm = "sigma",
        diffusion_norm: float = 1.0,
    ) -> ModelFn:
        """``model_fn`` -> the SDE drift ``f(x, t, **model_kwargs)``."""

        def drift(x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
            pred = model_fn(x, t, **model_kwargs)
            return self.drift(pred, x, t, diffusion_form=diffusion_form, diffusion_norm=diffusion_norm)

        return drift


_CONVERSIONS: dict[tuple[Prediction, Prediction], Callable[..., torch.Tensor]] = {
    (Prediction.VELOCITY, Prediction.NOISE): Transport.noise_from_velocity,
    (Prediction.VELOCITY, Prediction.SCORE): Transport.score_from_velocity,
    (Prediction.NOISE, Prediction.VELOCITY): Transport.velocity_from_noise,
    (Prediction.NOISE, Prediction.SCORE): Transport.score_from_noise,
    (Prediction.SCORE, Prediction.VELOCITY): Transport.velocity_from_score,
    (Prediction.SCORE, Prediction.NOISE): Transport.noise_from_score,
}
