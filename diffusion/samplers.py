"""Integrators: ODE (Euler, Heun, adaptive Dormand-Prince 5(4)) and SDE (Euler-Maruyama), plus
classifier-free guidance. They only integrate; the algebra (what the model predicts, how it becomes a
velocity or a drift) lives in ``transport.py``.

Every sampler runs from t0 (noise) to t1 (data), returns a ``SampleResult`` and counts ``nfe``, the number
of calls to the model function (a guided call that batches the conditional and unconditional halves
counts once). Functions are called as ``fn(x [B, ...], t [B], **model_kwargs)``. The state is integrated in
x0's dtype promoted to at least float32; samplers run under ``torch.no_grad``.

Typical use (the interval matters for score/noise models and vp; ``sample`` picks it for you):

    transport = Transport("linear", "velocity")
    out = sample(transport, model, torch.randn(16, 4, 32, 32), method="dopri5", model_kwargs={"y": y})
    out.x, out.nfe
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .transport import DiffusionForm, ModelFn, Transport, _parse

__all__ = [
    "SampleResult",
    "ODE_METHODS",
    "SDE_LAST_STEPS",
    "SAMPLING_METHODS",
    "sample_ode",
    "sample_sde",
    "sample",
    "guided_model_fn",
]

ODE_METHODS: tuple[str, ...] = ("euler", "heun", "dopri5")
SDE_LAST_STEPS: tuple[str | None, ...] = ("mean", "euler", "tweedie", None)
SAMPLING_METHODS: tuple[str, ...] = ODE_METHODS + ("euler-maruyama",)


@dataclass
class SampleResult:
    """x: samples [B, ...] at t1; nfe: model calls; trajectory [S + 1, B, ...] and times [S + 1]
    (float64) when ``return_trajectory=True`` (the states at every accepted step, x0 first)."""

    x: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None
    times: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


class _Counted:
    """Wraps ``fn(x, t, **kw)``: float time -> [B] tensor, output cast to the state dtype, calls counted."""

    def __init__(self, fn: ModelFn, model_kwargs: Mapping[str, Any] | None):
        self.fn = fn
        self.kwargs = dict(model_kwargs or {})
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)  # (B,)
        out = self.fn(x, t_vec, **self.kwargs)
        if out.shape != x.shape:
            raise ValueError(f"the model function returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        return out.to(x.dtype)


class _Recorder:
    def __init__(self, enabled: bool, x: torch.Tensor, t: float):
        self.enabled = enabled
        self.states = [x.clone()] if enabled else []
        self.times = [t] if enabled else []

    def add(self, x: torch.Tensor, t: float) -> None:
        if self.enabled:
            self.states.append(x.clone())
            self.times.append(t)

    def result(self, x: torch.Tensor, nfe: int) -> SampleResult:
        if not self.enabled:
            return SampleResult(x=x, nfe=nfe)
        return SampleResult(
            x=x, nfe=nfe, trajectory=torch.stack(self.states), times=torch.tensor(self.times, dtype=torch.float64)
        )


def _state(x0: torch.Tensor) -> torch.Tensor:
    return x0.to(torch.promote_types(x0.dtype, torch.float32)).clone()


def _progress_bar(enabled: bool, total: float, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _check_interval(t0: float, t1: float) -> None:
    if not (0.0 <= t0 <= 1.0 and 0.0 <= t1 <= 1.0) or t0 == t1:
        raise ValueError(f"expected 0 <= t0, t1 <= 1 and t0 != t1, got t0={t0}, t1={t1}")


# ---------------------------------------------------------------------------------------------------
# ODE
# ---------------------------------------------------------------------------------------------------

# Dormand-Prince 5(4) tableau (Hairer, Norsett & Wanner; the same as torchdiffeq's dopri5).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))  # 5th minus 4th order weights: the local error


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def _dopri5(f: _Counted, x: torch.Tensor, t0: float, t1: float, *, atol: float, rtol: float,
            max_steps: int, rec: _Recorder, bar) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) with FSAL, one step size for the whole batch (RMS error norm over all
    elements, as torchdiffeq), Hairer's initial step selection and a 0.9 * err^(-1/5) controller."""
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k1 = f(x, t0)

    # Initial step (Hairer, Norsett & Wanner II.4): one extra evaluation.
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k_probe = f(x + direction * h0 * k1, t0 + direction * h0)
    d2 = _rms((k_probe - k1) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, span)

    t, attempts = t0, 0
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        attempts += 1
        if attempts > max_steps:
            raise RuntimeError(
                f"dopri5 took more than max_steps={max_steps} steps, accepted or rejected (at t={t:.6g} of "
                f"[{t0}, {t1}]); the field may be stiff or singular there: loosen atol/rtol, raise max_steps, "
                "or move t0/t1 off the ends"
            )
        last = h >= abs(t1 - t)
        h = min(h, abs(t1 - t))
        dt = direction * h
        ks = [k1]
        for i in range(1, 7):
            xi = x + dt * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(xi, t + _C[i] * dt))
        x_new = xi  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = dt * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        err_norm = _rms(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if err_norm <= 1.0:
            t = t1 if last else t + dt
            x, k1 = x_new, ks[6]
            rec.add(x, t)
            if bar is not None:
                bar.update(h)
        if not math.isfinite(err_norm):
            raise FloatingPointError(f"dopri5: non-finite error estimate at t={t:.6g}; the field returned inf/nan")
        factor = 10.0 if err_norm == 0 else min(10.0, max(0.2, 0.9 * err_norm ** (-1 / 5)))
        h = h * factor
    return x


@torch.no_grad()
def sample_ode(
    velocity_fn: ModelFn,
    x0: torch.Tensor,
    *,
    method: Literal["euler", "heun", "dopri5"] = "euler",
    steps: int = 50,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    model_kwargs: Mapping[str, Any] | None = None,
    max_steps: int = 10_000,
    return_trajectory: bool = False,
    progress: bool = False,
) -> SampleResult:
    """Integrate dx/dt = velocity_fn(x, t, **model_kwargs) from x(t0) = x0 [B, ...] to t1.

    euler: ``steps`` evaluations; heun (explicit trapezoid): 2 * ``steps``; dopri5: adaptive with
    tolerances ``atol``/``rtol`` (``steps`` ignored), ~6 evaluations per accepted or rejected step.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}: expected one of {', '.join(map(repr, ODE_METHODS))}")
    _check_interval(t0, t1)
    if method != "dopri5" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    f = _Counted(velocity_fn, model_kwargs)
    x = _state(x0)
    rec = _Recorder(return_trajectory, x, t0)
    bar = _progress_bar(progress, abs(t1 - t0) if method == "dopri5" else steps, f"ode/{method}")
    try:
        if method == "dopri5":
            x = _dopri5(f, x, t0, t1, atol=atol, rtol=rtol, max_steps=max_steps, rec=rec, bar=bar)
        else:
            times = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
            for t, t_next in zip(times[:-1], times[1:]):
                dt = t_next - t
                k1 = f(x, t)
                if method == "euler":
                    x = x + dt * k1
                else:  # heun: predictor Euler step, corrector with the average slope
                    k2 = f(x + dt * k1, t_next)
                    x = x + 0.5 * dt * (k1 + k2)
                rec.add(x, t_next)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rec.result(x, f.nfe)


# ---------------------------------------------------------------------------------------------------
# SDE
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_sde(
    transport: Transport,
    model_fn: ModelFn,
    x0: torch.Tensor,
    *,
    steps: int = 250,
    diffusion_form: Literal["sigma", "sbdm"] | DiffusionForm = "sigma",
    diffusion_norm: float = 1.0,
    last_step: Literal["mean", "euler", "tweedie"] | None = "mean",
    last_step_size: float = 0.04,
    t0: float | None = None,
    t1: float | None = None,
    generator: torch.Generator | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
) -> SampleResult:
    """Euler-Maruyama for dx = [v + w score] dt + sqrt(2 w) dW (``Transport.drift``/``diffusion``) from
    x(t0) = x0 [B, ...], with ``steps`` model calls in total.

    With a ``last_step``, ``steps - 1`` stochastic steps cover [t0, t1 - last_step_size] and one
    noise-free step of ``last_step_size`` ends at t1: "mean" (x + drift h), "euler" (x + v h, the ODE) or
    "tweedie" (x = E[x1 | x_t], a jump to the denoised estimate). With ``last_step=None`` all ``steps``
    are stochastic and cover [t0, t1]. t0, t1 default to ``transport.sample_interval(sde=True, ...)``.
    """
    if last_step not in SDE_LAST_STEPS:
        raise ValueError(f"unknown last_step {last_step!r}: expected one of {', '.join(map(repr, SDE_LAST_STEPS))}")
    form = _parse(DiffusionForm, diffusion_form, "diffusion_form")
    d0, d1 = transport.sample_interval(sde=True, diffusion_form=form)
    t0 = d0 if t0 is None else float(t0)
    t1 = d1 if t1 is None else float(t1)
    _check_interval(t0, t1)
    if not t0 < t1:
        raise ValueError(f"sample_sde integrates forward in time (noise -> data): expected t0 < t1, got {t0}, {t1}")
    n_sde = steps - 1 if last_step is not None else steps
    if not isinstance(steps, int) or n_sde < 1:
        raise ValueError(f"steps must be an int >= {2 if last_step else 1} (with last_step={last_step!r}), got {steps!r}")
    t_end = t1 - last_step_size if last_step is not None else t1
    if last_step is not None and not t0 < t_end:
        raise ValueError(f"last_step_size={last_step_size} leaves no room for the SDE on [t0, t1] = [{t0}, {t1}]")

    f = _Counted(model_fn, model_kwargs)
    x = _state(x0)
    rec = _Recorder(return_trajectory, x, t0)
    bar = _progress_bar(progress, steps, "sde/euler-maruyama")
    sde = {"diffusion_form": form, "diffusion_norm": diffusion_norm}
    try:
        times = torch.linspace(t0, t_end, n_sde + 1, dtype=torch.float64).tolist()
        for t, t_next in zip(times[:-1], times[1:]):
            dt = t_next - t
            t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)  # (B,)
            drift = transport.drift(f(x, t), x, t_vec, **sde)  # (B, ...)
            w = float(transport.diffusion(torch.tensor(t, dtype=torch.float64), **sde))
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                device=generator.device if generator is not None else x.device).to(x.device)
            x = x + drift * dt + math.sqrt(2.0 * max(w, 0.0) * dt) * noise
            rec.add(x, t_next)
            if bar is not None:
                bar.update(1)
        if last_step is not None:
            t_vec = torch.full((x.shape[0],), t_end, device=x.device, dtype=x.dtype)
            pred = f(x, t_end)
            h = t1 - t_end
            if last_step == "mean":
                x = x + h * transport.drift(pred, x, t_vec, **sde)
            elif last_step == "euler":
                x = x + h * transport.to_velocity(pred, x, t_vec)
            else:  # tweedie
                x = transport.to_data(pred, x, t_vec).to(x.dtype)
            rec.add(x, t1)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rec.result(x, f.nfe)


# ---------------------------------------------------------------------------------------------------
# One entry point for configs and the CLI
# ---------------------------------------------------------------------------------------------------


def sample(
    transport: Transport,
    model_fn: ModelFn,
    x0: torch.Tensor,
    *,
    method: Literal["euler", "heun", "dopri5", "euler-maruyama"] = "euler",
    steps: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> SampleResult:
    """Sample with ``model_fn`` (a model of ``transport.prediction``) on the transport's sampling interval.

    ``method`` in ``SAMPLING_METHODS``; ``steps`` defaults to 50 for the ODE, 250 for Euler-Maruyama;
    ``options`` go to ``sample_ode`` (atol, rtol, return_trajectory, progress, ...) or ``sample_sde``
    (diffusion_form, diffusion_norm, last_step, ...).
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}: expected one of {', '.join(map(repr, SAMPLING_METHODS))}")
    if method == "euler-maruyama":
        return sample_sde(transport, model_fn, x0, steps=250 if steps is None else steps,
                          generator=generator, model_kwargs=model_kwargs, **options)
    t0, t1 = transport.sample_interval()
    options.setdefault("t0", t0)
    options.setdefault("t1", t1)
    return sample_ode(transport.velocity_fn(model_fn), x0, method=method, steps=50 if steps is None else steps,
                      model_kwargs=model_kwargs, **options)


# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------


def guided_model_fn(
    model_fn: ModelFn,
    cond_kwargs: Mapping[str, Any],
    uncond_kwargs: Mapping[str, Any],
    scale: float,
) -> Callable[..., torch.Tensor]:
    """Classifier-free guidance: ``fn(x, t, **extra) = uncond + scale * (cond - uncond)``.

    Both halves run in ONE model call on the batch [x; x] (2B rows): tensor kwargs are concatenated
    along dim 0 (cond first; each must have B rows), other kwargs must be equal in both dicts and pass
    unchanged. At ``scale == 1`` only the conditional call runs (B rows) and its output is returned as
    is. Guidance is affine in the output, so it can be applied to velocity, score or noise models alike
    (the conversions commute with it).
    """
    if set(cond_kwargs) != set(uncond_kwargs):
        raise ValueError(
            f"cond_kwargs and uncond_kwargs must have the same keys, got {sorted(cond_kwargs)} and {sorted(uncond_kwargs)}"
        )
    scale = float(scale)

    def guided(x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor:
        B = x.shape[0]
        if scale == 1.0:
            return model_fn(x, t, **cond_kwargs, **extra)
        kwargs: dict[str, Any] = {}
        for key, c in cond_kwargs.items():
            u = uncond_kwargs[key]
            if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
                if c.shape[:1] != (B,) or u.shape[:1] != (B,):
                    raise ValueError(
                        f"guidance kwarg {key!r}: expected B={B} rows in cond and uncond, got shapes "
                        f"{tuple(c.shape)} and {tuple(u.shape)}"
                    )
                kwargs[key] = torch.cat([c, u.to(c.device)], dim=0)  # (2B, ...)
            elif c is u or (not isinstance(c, torch.Tensor) and not isinstance(u, torch.Tensor) and c == u):
                kwargs[key] = c
            else:
                raise ValueError(
                    f"guidance kwarg {key!r} must be a tensor with B rows in both dicts, or the same value in "
                    f"both; got {type(c).__name__} and {type(u).__name__}"
                )
        t2 = torch.cat([t, t], dim=0) if torch.as_tensor(t).ndim == 1 else t  # (2B,)
        out = model_fn(torch.cat([x, x], dim=0), t2, **kwargs, **extra)  # (2B, ...)
        cond, uncond = out[:B], out[B:]
        return uncond + scale * (cond - uncond)

    return guided
