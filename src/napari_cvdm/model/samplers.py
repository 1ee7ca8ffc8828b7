"""Samplers for per-pixel schedules, and the mean / variance / γ-map statistics.

All samplers walk a time grid ``1 = t_K > … > t_0 = 0`` and read γ(t, y)
directly from the schedule (never an integrated β), so one model serves every
sampler. With ``α = sqrt(γ)``, ``σ = sqrt(1 − γ)``, one step from t to s < t:

- ``x̂0 = (x_t − σ_t ε̂) / α_t``, optionally clipped to the data range.
- DDIM family: ``c² = η² (σ_s²/σ_t²)(1 − α_t²/α_s²)``,
  ``x_s = α_s x̂0 + sqrt(σ_s² − c²) ε̂ + c ξ``. ``η = 1`` is the paper's
  (VDM) ancestral sampler, ``η = 0`` the deterministic ODE sampler.
- DPM-Solver++ 2M (data prediction, multistep), per pixel:
  ``λ_t = log(α_t/σ_t)``, ``h = λ_s − λ_t``,
  ``x_s = (σ_s/σ_t) x_t − α_s expm1(−h) D`` with ``D = x̂0 + (h / 2h_prev)(x̂0 − x̂0_prev)``
  (first order on the first step, on the last step and wherever a pixel's
  schedule is nearly flat, ``h_prev`` ≈ 0).

The last step always returns x̂0. Time grid: uniform in t (the schedule is
learned in t, so a uniform grid follows the model's own noise allocation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..errors import Cancelled
from .cvdm import CVDM

SAMPLERS = ("ancestral", "ddim", "dpm_solver_2m")

#: Below this log-SNR step a pixel's schedule is treated as flat (first-order update).
FLAT_STEP = 1e-4
#: Keeps x̂0 finite at t = 1 where α → 0.
MIN_ALPHA = 1e-8
#: γ can underflow to 0 for large λ; sampling needs ratios of γ, so it is floored.
MIN_GAMMA = 1e-20

ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


class SampleStatistics(NamedTuple):
    """Per-pixel statistics of N samples, each ``(B, C, H, W)``.

    ``variance`` is the unbiased sample variance (zeros when N = 1);
    ``gamma_map`` is γ(t = 0.5, y); ``samples`` is ``(B, N, C, H, W)`` or None.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    gamma_map: torch.Tensor
    samples: torch.Tensor | None


def time_grid(steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0, uniform in t."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def predict_data(x_t: torch.Tensor, eps_hat: torch.Tensor, gamma_t: torch.Tensor,
                 clip: float | None) -> torch.Tensor:
    """x̂0 = (x_t − σ_t ε̂) / α_t, clipped to ``[−clip, clip]`` unless ``clip`` is None."""
    x0_hat = (x_t - (1 - gamma_t).sqrt() * eps_hat) / gamma_t.sqrt().clamp_min(MIN_ALPHA)
    return x0_hat if clip is None else x0_hat.clamp(-clip, clip)


def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, gamma_t: torch.Tensor,
              gamma_s: torch.Tensor, eta: float, noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM-family step t → s (η = 1 ancestral, η = 0 deterministic)."""
    sigma2_t, sigma2_s = 1 - gamma_t, 1 - gamma_s
    c2 = eta**2 * (sigma2_s / sigma2_t.clamp_min(1e-12)) * (1 - gamma_t / gamma_s)
    c2 = c2.clamp(min=0.0).minimum(sigma2_s)
    x_s = gamma_s.sqrt() * x0_hat + (sigma2_s - c2).sqrt() * eps_hat
    if eta > 0:
        x_s = x_s + c2.sqrt() * noise
    return x_s


def _log_snr(gamma: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.log(gamma) - torch.log1p(-gamma))


def dpm_solver_2m_step(x_t: torch.Tensor, x0_hat: torch.Tensor, x0_hat_prev: torch.Tensor | None,
                       gamma_t: torch.Tensor, gamma_s: torch.Tensor,
                       step_prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++ 2M step t → s; returns ``x_s`` and this step's log-SNR step h."""
    step = _log_snr(gamma_s) - _log_snr(gamma_t)
    data = x0_hat
    if x0_hat_prev is not None:
        flat = step_prev.abs() < FLAT_STEP
        weight = torch.where(flat, torch.zeros_like(step), step / (2 * step_prev.where(~flat, 1.0)))
        data = x0_hat + weight * (x0_hat - x0_hat_prev)
    sigma_ratio = ((1 - gamma_s) / (1 - gamma_t)).sqrt()
    x_s = sigma_ratio * x_t - gamma_s.sqrt() * torch.expm1(-step) * data
    return x_s, step


@torch.no_grad()
def sample(
    model: CVDM,
    y: torch.Tensor,
    *,
    steps: int,
    sampler: str = "dpm_solver_2m",
    eta: float | None = None,
    clip: float | None = 1.0,
    schedule_map: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Draw one sample of x0 per row of ``y`` ``(B, Cy, H, W)``; returns ``(B, Cx, H, W)``.

    ``sampler``: one of :data:`SAMPLERS`; ``eta`` overrides the DDIM η
    (``ancestral`` is DDIM with η = 1). ``schedule_map`` is λ(y) if the caller
    already has it. ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the
    denoiser in reduced precision; the schedule arithmetic stays in float32.
    ``should_stop`` is polled before every network evaluation.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if eta is None:
        eta = 1.0 if sampler == "ancestral" else 0.0
    if schedule_map is None:
        schedule_map = model.schedule.schedule_map(y)
    times = time_grid(steps, y.device)
    shape = (y.shape[0], model.config.x_channels, *y.shape[-2:])
    x = torch.randn(shape, generator=generator, device=y.device, dtype=torch.float32)
    x0_hat_prev, step_prev = None, None
    for i in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled("sampling was stopped")
        gamma_t = model.schedule.gamma(times[i], schedule_map).clamp_min(MIN_GAMMA)
        with torch.autocast(y.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            eps_hat = model.predict_noise(x, y, gamma_t).float()
        x0_hat = predict_data(x, eps_hat, gamma_t, clip)
        if i == steps - 1:
            x = x0_hat  # t_0 = 0: the sample is the data prediction
        else:
            gamma_s = model.schedule.gamma(times[i + 1], schedule_map).clamp_min(MIN_GAMMA)
            if sampler == "dpm_solver_2m":
                x, step_prev = dpm_solver_2m_step(x, x0_hat, x0_hat_prev, gamma_t, gamma_s, step_prev)
                x0_hat_prev = x0_hat
            else:
                noise = torch.randn(shape, generator=generator, device=y.device) if eta > 0 else None
                x = ddim_step(x0_hat, eps_hat, gamma_t, gamma_s, eta, noise)
        if progress is not None:
            progress(i + 1, steps)
    return x


@torch.no_grad()
def sample_statistics(
    model: CVDM,
    y: torch.Tensor,
    n_samples: int,
    *,
    steps: int,
    sampler: str = "dpm_solver_2m",
    eta: float | None = None,
    clip: float | None = 1.0,
    max_batch: int | None = None,
    keep_samples: bool = False,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> SampleStatistics:
    """Mean, unbiased variance and γ(0.5, y) of ``n_samples`` samples per input.

    ``y``: ``(B, Cy, H, W)``. λ(y) is computed once; the N samples of each
    input are drawn together as one batch (at most ``max_batch`` rows at a
    time, merged with Chan's parallel variance update).
    """
    if n_samples < 1:
        raise ValueError("n_samples must be at least 1")
    batch = y.shape[0]
    chunk = n_samples if max_batch is None else max(1, min(n_samples, max_batch // max(batch, 1)))
    schedule_map = model.schedule.schedule_map(y)
    n_chunks = -(-n_samples // chunk)
    count, mean, sum_sq_dev, kept = 0, None, None, []
    for c in range(n_chunks):
        k = min(chunk, n_samples - count)
        chunk_progress = None
        if progress is not None:
            chunk_progress = lambda i, total, c=c: progress(c * total + i, n_chunks * total)  # noqa: E731
        draws = sample(
            model, y.repeat_interleave(k, 0), steps=steps, sampler=sampler, eta=eta, clip=clip,
            schedule_map=schedule_map.repeat_interleave(k, 0), generator=generator,
            autocast_dtype=autocast_dtype, progress=chunk_progress, should_stop=should_stop,
        ).reshape(batch, k, *schedule_map.shape[1:])
        draws64 = draws.double()
        chunk_mean = draws64.mean(1)
        chunk_sq_dev = (draws64 - chunk_mean.unsqueeze(1)).pow(2).sum(1)
        if mean is None:
            mean, sum_sq_dev = chunk_mean, chunk_sq_dev
        else:
            delta = chunk_mean - mean
            total = count + k
            mean = mean + delta * (k / total)
            sum_sq_dev = sum_sq_dev + chunk_sq_dev + delta.pow(2) * (count * k / total)
        count += k
        if keep_samples:
            kept.append(draws)
    variance = sum_sq_dev / (count - 1) if count > 1 else torch.zeros_like(sum_sq_dev)
    return SampleStatistics(
        mean.float(),
        variance.float(),
        model.schedule.gamma(0.5, schedule_map),
        torch.cat(kept, 1) if keep_samples else None,
    )
